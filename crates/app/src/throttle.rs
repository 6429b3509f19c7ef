//! What makes password guessing expensive for the guesser and cheap for the site.
//!
//! [`LoginThrottle`] counts failed logins in token buckets, as fail2ban and Django-axes do,
//! on two keys:
//! - the pair (account, client address): [`PAIR`] wrong passwords in a row, then one more
//!   every 30 s. Keyed on the pair, so a guesser cannot lock the real user out: the real
//!   user, from another address, has a bucket of their own;
//! - the client address alone, across accounts: [`ADDRESS`] failures, then one every 10 s,
//!   so one address cannot spray a common password over many accounts.
//!
//! A throttled attempt is answered 429 with `Retry-After` *before* any hashing, so it costs
//! the server a map lookup. A successful login clears its pair's failures (and refunds the
//! address's token), so a user who mistypes a few times is not held back afterwards. The
//! buckets live in memory, per app server: with N app servers a guesser gets at most N
//! times the budget, still far from free.
//!
//! [`HashQueue`] bounds the argon2 work itself: a few hashes at a time on the blocking
//! pool, a bounded queue behind them, and at most [`PER_CLIENT`] from one address, so a
//! login flood from many addresses is refused quickly (503) instead of piling up, and one
//! address cannot fill the queue ahead of everyone else. Attempts from an address with no
//! recent failure (on this account or any) wait in a first lane that is served before
//! the rest: a guesser is in the slow lane from its second wrong password on, so a real
//! user's login does not queue behind a flood of guesses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use tokio::sync::oneshot;

/// A token bucket's shape: `burst` tokens, one back every `every`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rule {
    pub(crate) burst: u32,
    pub(crate) every: Duration,
}

/// Wrong passwords one address may try on one account before waiting.
pub(crate) const PAIR: Rule = Rule {
    burst: 10,
    every: Duration::from_secs(30),
};
/// Failed logins one address may make across all accounts before waiting.
pub(crate) const ADDRESS: Rule = Rule {
    burst: 30,
    every: Duration::from_secs(10),
};
/// Buckets kept per table; beyond it the fullest (least informative) are dropped, so a
/// guesser cycling through usernames cannot grow the map without bound.
const MAX_BUCKETS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens left, in units of 1/1000 of a token.
    milli: u64,
    updated: Instant,
}

impl Bucket {
    fn full(rule: Rule, now: Instant) -> Bucket {
        Bucket {
            milli: u64::from(rule.burst) * 1000,
            updated: now,
        }
    }

    /// Adds what has dripped back since the last update.
    fn refill(&mut self, rule: Rule, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        let every = rule.every.as_millis().max(1);
        let gained = (elapsed.as_millis() * 1000 / every).min(u128::from(u64::MAX)) as u64;
        self.milli = (self.milli.saturating_add(gained)).min(u64::from(rule.burst) * 1000);
        self.updated = now;
    }

    /// How long until one whole token is back.
    fn wait(&self, rule: Rule) -> Duration {
        let missing = 1000u64.saturating_sub(self.milli);
        let every = rule.every.as_millis().max(1) as u64;
        Duration::from_millis((missing * every).div_ceil(1000))
    }

    fn is_full(&self, rule: Rule) -> bool {
        self.milli >= u64::from(rule.burst) * 1000
    }
}

/// One table of buckets with its rule.
struct Table<K> {
    rule: Rule,
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(rule: Rule) -> Self {
        Table {
            rule,
            buckets: HashMap::new(),
        }
    }

    /// The refilled bucket for `key` (a full one when the key is new).
    fn current(&mut self, key: &K, now: Instant) -> Bucket {
        let rule = self.rule;
        match self.buckets.get_mut(key) {
            Some(bucket) => {
                bucket.refill(rule, now);
                *bucket
            }
            None => Bucket::full(rule, now),
        }
    }

    fn take(&mut self, key: &K, now: Instant) {
        let mut bucket = self.current(key, now);
        bucket.milli = bucket.milli.saturating_sub(1000);
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_BUCKETS {
            self.prune(now);
        }
        self.buckets.insert(key.clone(), bucket);
    }

    fn give_back(&mut self, key: &K, now: Instant) {
        let rule = self.rule;
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.refill(rule, now);
            bucket.milli = (bucket.milli + 1000).min(u64::from(rule.burst) * 1000);
        }
    }

    /// Drops buckets that have refilled (they hold no information), then, if still too
    /// many, the tenth that has waited longest since its last failure.
    fn prune(&mut self, now: Instant) {
        let rule = self.rule;
        self.buckets.retain(|_, b| {
            b.refill(rule, now);
            !b.is_full(rule)
        });
        if self.buckets.len() >= MAX_BUCKETS {
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 10];
            self.buckets.retain(|_, b| b.updated > cutoff);
        }
    }
}

struct Tables {
    pairs: Table<(String, IpAddr)>,
    addresses: Table<IpAddr>,
}

/// Failed-login counting per (account, address) and per address. See the module docs.
pub(crate) struct LoginThrottle {
    tables: Mutex<Tables>,
    /// Attempts refused with 429, for `/metrics`.
    throttled: AtomicU64,
}

impl LoginThrottle {
    pub(crate) fn new(pair: Rule, address: Rule) -> Self {
        LoginThrottle {
            tables: Mutex::new(Tables {
                pairs: Table::new(pair),
                addresses: Table::new(address),
            }),
            throttled: AtomicU64::new(0),
        }
    }

    /// Admits one login attempt for `account` from `client` and charges it as a failure in
    /// advance (so concurrent guesses cannot all slip in before the first is counted), or
    /// says how long to wait. Call [`LoginThrottle::succeeded`] when the password was right.
    /// The lane says whether the pair and the address had no failures on record.
    pub(crate) fn begin(&self, account: &str, client: IpAddr) -> Result<Lane, Duration> {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let pair_key = (account.to_owned(), client);
        let pair = tables.pairs.current(&pair_key, now);
        let address = tables.addresses.current(&client, now);
        let (pair_rule, address_rule) = (tables.pairs.rule, tables.addresses.rule);
        if pair.milli < 1000 || address.milli < 1000 {
            self.throttled.fetch_add(1, Relaxed);
            let wait = pair.wait(pair_rule).max(address.wait(address_rule));
            return Err(wait.max(Duration::from_secs(1)));
        }
        let lane = if pair.is_full(pair_rule) && address.is_full(address_rule) {
            Lane::First
        } else {
            Lane::Normal
        };
        tables.pairs.take(&pair_key, now);
        tables.addresses.take(&client, now);
        Ok(lane)
    }

    /// The attempt [`LoginThrottle::begin`] admitted was a correct login: forget this
    /// pair's failures and give the address its token back.
    pub(crate) fn succeeded(&self, account: &str, client: IpAddr) {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.pairs.buckets.remove(&(account.to_owned(), client));
        tables.addresses.give_back(&client, now);
    }

    /// The attempt [`LoginThrottle::begin`] admitted checked no password (the database or
    /// the hash queue refused): give both tokens back.
    pub(crate) fn refund(&self, account: &str, client: IpAddr) {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.pairs.give_back(&(account.to_owned(), client), now);
        tables.addresses.give_back(&client, now);
    }

    /// Attempts answered 429 so far.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled.load(Relaxed)
    }
}

/// Why [`HashQueue::run`] did not run the hash.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Busy {
    /// The queue is full: the whole server is hashing as fast as it can (503).
    Full,
    /// This client already has [`PER_CLIENT`] hashes queued or running (429).
    Client,
}

/// Hashes one client address may have queued or running at once. Two, not one, so two
/// people behind one NAT can log in at the same moment.
pub(crate) const PER_CLIENT: usize = 2;
/// How long a hash may wait for its turn before the request gives up with 503.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Which waiting line a hash joins; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// No failure on record for this client: served first.
    First,
    /// Everyone else, in arrival order.
    Normal,
}

/// The hashers: how many are idle, and who waits for one, by lane.
struct Turns {
    free: usize,
    first: VecDeque<oneshot::Sender<()>>,
    normal: VecDeque<oneshot::Sender<()>>,
}

/// A hasher held by one hash; handed to the next waiter when dropped.
struct Turn<'a> {
    queue: &'a HashQueue,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.queue.release();
    }
}

/// A hash waiting for its turn. If it gives up (timeout, or the request was cancelled)
/// just as its turn was handed to it, the turn is passed on rather than lost.
struct Waiting<'a> {
    queue: &'a HashQueue,
    turn: oneshot::Receiver<()>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.turn.close();
        if self.turn.try_recv().is_ok() {
            self.queue.release();
        }
    }
}

/// A bounded queue in front of argon2. See the module docs.
pub(crate) struct HashQueue {
    turns: Mutex<Turns>,
    /// Hashes admitted (queued or running), in total and per client address.
    admitted: Mutex<(usize, HashMap<IpAddr, usize>)>,
    max_admitted: usize,
    hashes: AtomicU64,
    refused: AtomicU64,
}

/// Gives a client's place in the queue back when the hash is done (or abandoned).
struct Place<'a> {
    queue: &'a HashQueue,
    client: Option<IpAddr>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut admitted = self
            .queue
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        admitted.0 = admitted.0.saturating_sub(1);
        if let Some(client) = self.client {
            if let Some(n) = admitted.1.get_mut(&client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    admitted.1.remove(&client);
                }
            }
        }
    }
}

impl HashQueue {
    /// `parallel` hashes at once, `queued` more waiting.
    pub(crate) fn new(parallel: usize, queued: usize) -> Self {
        let parallel = parallel.max(1);
        HashQueue {
            turns: Mutex::new(Turns {
                free: parallel,
                first: VecDeque::new(),
                normal: VecDeque::new(),
            }),
            admitted: Mutex::new((0, HashMap::new())),
            max_admitted: parallel + queued,
            hashes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The default for this machine: half the cores hash (at least one), so argon2 never
    /// takes every core from the requests that do not hash, and 32 per hasher may wait.
    /// A waiting hash costs only a parked task (the 19 MiB are taken when it runs), so the
    /// queue is as long as a real user can bear to wait behind a flood from many
    /// addresses (each of which holds at most [`PER_CLIENT`] places): about 33 hashes,
    /// half a second in release builds. Beyond that, 503 at once.
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let parallel = cores.div_ceil(2);
        HashQueue::new(parallel, 32 * parallel)
    }

    /// Runs `work` (an argon2 hash or verification) on the blocking pool when its turn
    /// comes, or refuses at once when the queue or this client's share of it is full.
    /// `client` is `None` for the server's own hashes (the dummy hash at start).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        client: Option<IpAddr>,
        lane: Lane,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<anyhow::Result<T>, Busy> {
        let _place = self.admit(client)?;
        let turn = self.turn(lane).await?;
        self.hashes.fetch_add(1, Relaxed);
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| anyhow::anyhow!("a password hash task failed: {e}"));
        drop(turn);
        Ok(result)
    }

    /// Waits (at most [`MAX_WAIT`]) for an idle hasher, in `lane`.
    async fn turn(&self, lane: Lane) -> Result<Turn<'_>, Busy> {
        let receiver = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            if turns.free > 0 {
                turns.free -= 1;
                return Ok(Turn { queue: self });
            }
            let (sender, receiver) = oneshot::channel();
            match lane {
                Lane::First => turns.first.push_back(sender),
                Lane::Normal => turns.normal.push_back(sender),
            }
            receiver
        };
        let mut waiting = Waiting {
            queue: self,
            turn: receiver,
        };
        match tokio::time::timeout(MAX_WAIT, &mut waiting.turn).await {
            // The turn was handed over and taken: `waiting` has nothing left to pass on.
            Ok(Ok(())) => Ok(Turn { queue: self }),
            Ok(Err(_)) | Err(_) => {
                self.refused.fetch_add(1, Relaxed);
                Err(Busy::Full)
            }
        }
    }

    /// Hands a finished hash's hasher to the next waiter, first lane first, skipping
    /// waiters that have given up; with nobody waiting, the hasher is idle.
    fn release(&self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let next = match turns.first.pop_front() {
                Some(sender) => Some(sender),
                None => turns.normal.pop_front(),
            };
            match next {
                Some(sender) => {
                    if sender.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    turns.free += 1;
                    return;
                }
            }
        }
    }

    fn admit(&self, client: Option<IpAddr>) -> Result<Place<'_>, Busy> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if admitted.0 >= self.max_admitted {
            self.refused.fetch_add(1, Relaxed);
            return Err(Busy::Full);
        }
        if let Some(client) = client {
            let mine = admitted.1.entry(client).or_insert(0);
            if *mine >= PER_CLIENT {
                self.refused.fetch_add(1, Relaxed);
                return Err(Busy::Client);
            }
            *mine += 1;
        }
        admitted.0 += 1;
        Ok(Place {
            queue: self,
            client,
        })
    }

    /// Password hashes computed (hashes and verifications) since start.
    pub(crate) fn hashes(&self) -> u64 {
        self.hashes.load(Relaxed)
    }

    /// Hash requests refused because the queue (or a client's share) was full.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_pair_is_throttled_after_its_burst_and_another_address_is_not() {
        let throttle = LoginThrottle::new(PAIR, ADDRESS);
        for _ in 0..PAIR.burst {
            assert!(throttle.begin("alice", A).is_ok());
        }
        let wait = throttle.begin("alice", A).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= PAIR.every,
            "{wait:?}"
        );
        assert!(
            throttle.begin("alice", B).is_ok(),
            "the real user elsewhere"
        );
        assert!(throttle.begin("bob", A).is_ok(), "another account from A");
        assert_eq!(throttle.throttled(), 1);
    }

    #[test]
    fn only_a_clean_record_gets_the_first_lane() {
        let throttle = LoginThrottle::new(PAIR, ADDRESS);
        assert_eq!(throttle.begin("alice", A), Ok(Lane::First));
        assert_eq!(throttle.begin("alice", A), Ok(Lane::Normal));
        assert_eq!(
            throttle.begin("bob", A),
            Ok(Lane::Normal),
            "A has failed before"
        );
        assert_eq!(throttle.begin("alice", B), Ok(Lane::First));
        throttle.succeeded("alice", B);
        assert_eq!(
            throttle.begin("alice", B),
            Ok(Lane::First),
            "success leaves no mark"
        );
    }

    #[tokio::test]
    async fn the_first_lane_is_served_before_the_normal_one() {
        let queue = std::sync::Arc::new(HashQueue::new(1, 10));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let blocker = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let _ = queue
                    .run(None, Lane::Normal, move || {
                        let _ = wait.recv();
                    })
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut waiters = Vec::new();
        for (name, lane) in [
            ("guess1", Lane::Normal),
            ("guess2", Lane::Normal),
            ("user", Lane::First),
        ] {
            let queue = queue.clone();
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let _ = queue
                    .run(None, lane, move || order.lock().unwrap().push(name))
                    .await;
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        release.send(()).unwrap();
        blocker.await.unwrap();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["user", "guess1", "guess2"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_the_hasher() {
        let queue = std::sync::Arc::new(HashQueue::new(1, 10));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let _ = queue
                    .run(None, Lane::Normal, move || {
                        let _ = wait.recv();
                    })
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let cancelled = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.run(None, Lane::First, || ()).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        release.send(()).unwrap();
        blocker.await.unwrap();
        let served =
            tokio::time::timeout(Duration::from_secs(2), queue.run(None, Lane::Normal, || ()))
                .await;
        assert!(matches!(served, Ok(Ok(Ok(())))), "the hasher is free again");
    }

    #[test]
    fn an_address_spraying_accounts_is_throttled() {
        let throttle = LoginThrottle::new(PAIR, ADDRESS);
        for i in 0..ADDRESS.burst {
            assert!(throttle.begin(&format!("user{i}"), A).is_ok());
        }
        assert!(throttle.begin("someone_new", A).is_err());
        assert!(throttle.begin("someone_new", B).is_ok());
    }

    #[test]
    fn success_clears_the_pair_and_refills_over_time() {
        let fast = Rule {
            burst: 2,
            every: Duration::from_millis(50),
        };
        let throttle = LoginThrottle::new(fast, ADDRESS);
        assert!(throttle.begin("alice", A).is_ok());
        throttle.succeeded("alice", A);
        assert!(throttle.begin("alice", A).is_ok());
        assert!(throttle.begin("alice", A).is_ok());
        assert!(throttle.begin("alice", A).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(throttle.begin("alice", A).is_ok(), "a token dripped back");
    }

    #[test]
    fn the_tables_stay_bounded() {
        let mut table = Table::new(PAIR);
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS + 10) {
            table.take(&i, now);
        }
        assert!(table.buckets.len() <= MAX_BUCKETS);
    }

    #[tokio::test]
    async fn the_queue_refuses_past_its_bounds() {
        let queue = std::sync::Arc::new(HashQueue::new(1, 2));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Arc::new(Mutex::new(wait));
        let mut running = Vec::new();
        for client in [A, A, B] {
            let queue = queue.clone();
            let wait = wait.clone();
            running.push(tokio::spawn(async move {
                queue
                    .run(Some(client), Lane::Normal, move || {
                        let _ = wait.lock().unwrap().recv();
                    })
                    .await
                    .is_ok()
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            queue.run(Some(A), Lane::Normal, || ()).await.err(),
            Some(Busy::Full)
        );
        assert_eq!(queue.refused(), 1);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for task in running {
            assert!(task.await.unwrap());
        }
        assert_eq!(queue.hashes(), 3);
        // Per client: with room in the queue, a third from A is still refused.
        let queue = std::sync::Arc::new(HashQueue::new(1, 10));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Arc::new(Mutex::new(wait));
        let mut running = Vec::new();
        for _ in 0..PER_CLIENT {
            let queue = queue.clone();
            let wait = wait.clone();
            running.push(tokio::spawn(async move {
                let _ = queue
                    .run(Some(A), Lane::Normal, move || {
                        let _ = wait.lock().unwrap().recv();
                    })
                    .await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            queue.run(Some(A), Lane::Normal, || ()).await.err(),
            Some(Busy::Client)
        );
        let other = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.run(Some(B), Lane::Normal, || ()).await.is_ok() })
        };
        for _ in 0..PER_CLIENT {
            release.send(()).unwrap();
        }
        for task in running {
            task.await.unwrap();
        }
        assert!(
            other.await.unwrap(),
            "another client is admitted and served"
        );
    }
}
