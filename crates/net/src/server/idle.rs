//! The deadlines of a listener's waiting connections on one serving thread, in one
//! list swept by one timer.
//!
//! Between requests a plain HTTP/1 connection is parked (see `connection.rs`): its
//! task holds the bare socket and waits for the client's next bytes or its idle
//! deadline. A `tokio::time::Sleep` per waiting connection (112 bytes, plus a drain
//! waiter of 64) was the largest part of what an idle client cost; here a waiting
//! connection holds one index into its thread's [`Waiting`] list (24 bytes an entry:
//! the deadline in milliseconds and the task's waker), and one task per list
//! sleeps until the earliest deadline, wakes the connections whose time is up, and,
//! once the node drains, shortens every wait to the drain's grace, as HAProxy and
//! nginx keep their idle connections' timeouts in one timer tree per thread. (The
//! admin listener, served by the node's own runtime, has one list for all of it: the
//! lock makes that correct, its few connections make it cheap.)
//!
//! A removed entry does not move the sweeper's wake-up: it wakes at a deadline that
//! may have gone, finds nothing due, and sleeps until the next. Sweeps are at least
//! [`SWEEP_GAP`] apart, so deadlines spread over time cost at most 20 passes over
//! the list a second; freed entries are used again lowest first, so the waiting ones
//! stay at the front and the list shrinks from its end as they go.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Shutdown;

/// The least time between two sweeps: a deadline is met within this much (the
/// timeouts it serves are seconds long).
const SWEEP_GAP: Duration = Duration::from_millis(50);

/// `due` of an entry whose deadline has passed (the sweeper woke its task).
const EXPIRED: u64 = 0;
/// `due` of a free entry.
const FREE: u64 = u64::MAX;

/// Entries an emptied list keeps room for: a quiet thread whose one connection parks
/// and wakes does not allocate each time.
const KEPT: usize = 16;

/// The waiting connections of one serving thread, with their deadlines.
pub(super) struct Waiting {
    list: Mutex<List>,
    /// Told when an entry's deadline is earlier than the sweeper's planned wake-up.
    earlier: Notify,
    /// Milliseconds count from here; 1 ms before the list was made, so that no
    /// deadline is [`EXPIRED`].
    epoch: Instant,
    /// How long a wait lasts at most once the node drains.
    grace: Duration,
    shutdown: Shutdown,
}

#[derive(Default)]
struct List {
    entries: Vec<Entry>,
    /// Indexes of free entries, lowest first (some may be past the end: stale).
    free: BinaryHeap<Reverse<u32>>,
    /// When the sweeper wakes next, in ms from the epoch: no entry is due before.
    wake: Option<u64>,
}

struct Entry {
    /// The deadline, in ms from the epoch; or [`EXPIRED`], or [`FREE`].
    due: u64,
    /// The waiting task, once it has been polled.
    waker: Option<Waker>,
}

impl Entry {
    /// Whether a connection waits on it: neither free nor expired.
    fn waits(&self) -> bool {
        self.due != FREE && self.due != EXPIRED
    }
}

/// One connection's place in its thread's [`Waiting`] list: freed when dropped.
pub(super) struct Wait<'a> {
    waiting: &'a Waiting,
    index: u32,
}

impl Waiting {
    /// A list whose waits end at most `grace` after `shutdown` is asked.
    pub fn new(shutdown: Shutdown, grace: Duration) -> Waiting {
        let now = Instant::now();
        Waiting {
            list: Mutex::default(),
            earlier: Notify::new(),
            epoch: now.checked_sub(Duration::from_millis(1)).unwrap_or(now),
            grace,
            shutdown,
        }
    }

    /// A wait that ends at `deadline` (at most the grace from now, if the node is
    /// draining): poll it with [`Wait::poll_expired`].
    pub fn enter(&self, deadline: Instant) -> Wait<'_> {
        let mut due = self.ms(deadline);
        let mut list = self.lock();
        // Read under the lock, which orders it with the sweeper's `shorten`: either
        // this entry is in the list when the drain shortens it, or it sees the drain.
        if self.shutdown.is_triggered() {
            due = due.min(self.ms(Instant::now() + self.grace));
        }
        let entry = Entry { due, waker: None };
        // Free indexes past the end are stale: their entries went with the tail.
        let len = list.entries.len();
        let reused = std::iter::from_fn(|| list.free.pop().map(|Reverse(i)| i))
            .find(|&i| (i as usize) < len);
        let index = match reused {
            Some(index) => {
                list.entries[index as usize] = entry;
                index
            }
            None => {
                list.entries.push(entry);
                // More than 4 billion connections cannot wait on one thread: the
                // budget caps them far below.
                u32::try_from(list.entries.len() - 1).expect("fewer waits than u32::MAX")
            }
        };
        if list.wake.is_none_or(|wake| due < wake) {
            list.wake = Some(due);
            self.earlier.notify_one();
        }
        Wait {
            waiting: self,
            index,
        }
    }

    /// Sweeps the list for as long as it is polled (until the listener's last
    /// connection is gone): wakes the waits whose deadline passed, and once shutdown
    /// is asked shortens every wait to the grace.
    pub async fn sweep(&self) {
        let mut draining = false;
        let mut last = Instant::now();
        loop {
            let wake = self.lock().wake;
            let at = match wake {
                Some(ms) => (self.epoch + Duration::from_millis(ms)).max(last + SWEEP_GAP),
                // Nothing waits: only a new entry (or the drain) wakes the sweeper.
                None => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = self.earlier.notified() => continue,
                () = self.shutdown.wait(), if !draining => {
                    draining = true;
                    self.shorten(self.ms(Instant::now() + self.grace));
                    continue;
                }
            }
            last = Instant::now();
            // Now rounded down, deadlines up: a wait never ends early.
            let since = last.saturating_duration_since(self.epoch);
            self.expire(u64::try_from(since.as_millis()).unwrap_or(FREE - 1));
        }
    }

    /// Wakes every wait due by `now` (ms) and plans the next wake-up.
    fn expire(&self, now: u64) {
        let mut list = self.lock();
        let mut next = None::<u64>;
        for entry in list.entries.iter_mut().filter(|e| e.waits()) {
            if entry.due <= now {
                entry.due = EXPIRED;
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
            } else {
                next = Some(next.map_or(entry.due, |n| n.min(entry.due)));
            }
        }
        list.wake = next;
    }

    /// Brings every deadline to `cap` (ms) at the latest.
    fn shorten(&self, cap: u64) {
        let mut list = self.lock();
        for entry in list.entries.iter_mut().filter(|e| e.waits()) {
            entry.due = entry.due.min(cap);
        }
        if !list.entries.is_empty() {
            list.wake = Some(list.wake.map_or(cap, |wake| wake.min(cap)));
        }
    }

    /// `at` in whole milliseconds from the epoch, rounded up: a wait never ends early.
    fn ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        let ms = since.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms)
            .unwrap_or(FREE - 1)
            .clamp(EXPIRED + 1, FREE - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, List> {
        // The list is left whole by every holder of the lock, even one that panics.
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Wait<'_> {
    /// `Ready` once the deadline has passed; else the task is woken when it does.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut list = self.waiting.lock();
        let entry = &mut list.entries[self.index as usize];
        if entry.due == EXPIRED {
            return Poll::Ready(());
        }
        match &entry.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let mut list = self.waiting.lock();
        list.entries[self.index as usize] = Entry {
            due: FREE,
            waker: None,
        };
        list.free.push(Reverse(self.index));
        // Trailing free entries go, so that a burst of waits leaves no long list.
        while list.entries.last().is_some_and(|e| e.due == FREE) {
            list.entries.pop();
        }
        if list.entries.is_empty() {
            // Nothing waits: most of what a burst of waits grew goes back.
            list.entries.shrink_to(KEPT);
            list.free.clear();
            list.free.shrink_to(KEPT);
            list.wake = None;
        } else if list.free.len() > list.entries.len() {
            let len = list.entries.len();
            list.free.retain(|&Reverse(i)| (i as usize) < len);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A list and its sweeper, on the test's paused clock.
    fn swept(grace: Duration) -> (Arc<Waiting>, crate::shutdown::Trigger) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let waiting = Arc::new(Waiting::new(shutdown, grace));
        let sweeper = waiting.clone();
        tokio::spawn(async move { sweeper.sweep().await });
        (waiting, trigger)
    }

    /// Enters a wait for `deadline` on a task of its own; resolves to when it ended.
    fn wait_until(waiting: &Arc<Waiting>, deadline: Instant) -> tokio::task::JoinHandle<Instant> {
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let wait = waiting.enter(deadline);
            std::future::poll_fn(|cx| wait.poll_expired(cx)).await;
            Instant::now()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_deadline_and_not_before() {
        let (waiting, _trigger) = swept(Duration::from_secs(1));
        let start = Instant::now();
        // The later deadline first: the earlier one must move the sweeper's wake-up.
        let deadlines = [300, 100, 200, 100].map(|ms| start + Duration::from_millis(ms));
        let waits: Vec<_> = deadlines.iter().map(|&d| wait_until(&waiting, d)).collect();
        for (wait, deadline) in waits.into_iter().zip(deadlines) {
            let ended = wait.await.unwrap();
            assert!(ended >= deadline, "ended {:?} early", deadline - ended);
            assert!(
                ended <= deadline + SWEEP_GAP,
                "ended {:?} late",
                ended - deadline
            );
        }
        assert!(waiting.lock().entries.is_empty(), "every entry freed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_shortens_every_wait_to_the_grace() {
        let grace = Duration::from_secs(1);
        let (waiting, trigger) = swept(grace);
        let long = Instant::now() + Duration::from_secs(60);
        let before = wait_until(&waiting, long);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fired = Instant::now();
        trigger.fire();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Entered while draining: its own deadline is shortened as it enters.
        let during = wait_until(&waiting, long);
        let ended = before.await.unwrap();
        assert!(ended >= fired + grace && ended <= fired + grace + SWEEP_GAP);
        let entered = fired + Duration::from_millis(300);
        let ended = during.await.unwrap();
        assert!(ended >= entered + grace && ended <= entered + grace + SWEEP_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn free_entries_are_used_again_lowest_first_and_an_empty_list_shrinks() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        let waiting = Waiting::new(shutdown, Duration::from_secs(1));
        let later = Instant::now() + Duration::from_secs(10);
        let mut waits: Vec<_> = (0..100).map(|_| Some(waiting.enter(later))).collect();
        assert_eq!(waits[99].as_ref().unwrap().index, 99);
        waits[70] = None;
        waits[10] = None;
        waits[40] = None;
        let again = waiting.enter(later);
        assert_eq!(again.index, 10, "the lowest freed entry");
        waits[10] = Some(again);
        // Every entry from 30 up goes: the tail's free entries go with them.
        waits.truncate(30);
        assert_eq!(waiting.lock().entries.len(), 30, "a free tail goes");
        let next = waiting.enter(later);
        assert_eq!(next.index, 30, "stale free indexes (40, 70) are not used");
        drop(next);
        // A burst of 1,000 waits, then all gone: the list keeps little room.
        let burst: Vec<_> = (0..1000).map(|_| waiting.enter(later)).collect();
        drop(burst);
        drop(waits);
        let list = waiting.lock();
        assert!(list.entries.is_empty() && list.entries.capacity() <= KEPT);
        assert!(list.free.is_empty() && list.free.capacity() <= KEPT);
        assert!(list.wake.is_none());
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        let waiting = Waiting::new(shutdown, Duration::from_secs(1));
        let at = waiting.epoch + Duration::from_micros(2_001);
        assert_eq!(waiting.ms(at), 3);
        assert_eq!(waiting.ms(waiting.epoch + Duration::from_millis(2)), 2);
        assert_eq!(waiting.ms(waiting.epoch), 1, "never EXPIRED");
    }
}
