//! Graceful shutdown, as one signal every task can wait on.
//!
//! A node stops in two steps: listeners stop accepting, then open connections finish
//! the request they are on (bounded by a drain timeout). A flag and a [`Notify`]
//! carry the signal: a waiter registers with the `Notify` before it reads the flag, so
//! a signal sent between the two is not missed, and a task that subscribes later sees
//! the flag. (Connections waiting for a client's bytes do not wait on it each: their
//! list's sweeper does, see `server/idle.rs`.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

/// The side that says "stop". Dropped, it says it too: nobody is left to say it.
#[derive(Debug)]
pub struct Trigger {
    signal: Arc<Signal>,
}

/// The side that waits for "stop". Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: Arc<Signal>,
}

/// A new pair: call [`Trigger::fire`] to stop everything holding a [`Shutdown`].
pub fn channel() -> (Trigger, Shutdown) {
    let signal = Arc::new(Signal::default());
    (
        Trigger {
            signal: signal.clone(),
        },
        Shutdown { signal },
    )
}

impl Trigger {
    /// Tells every holder of the paired [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.signal.fired.store(true, Ordering::Release);
        self.signal.notify.notify_waiters();
    }

    /// A new waiter on this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            signal: self.signal.clone(),
        }
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Shutdown {
    /// Resolves once shutdown was asked for (at once if it already was).
    pub async fn wait(&self) {
        let mut notified = std::pin::pin!(self.signal.notify.notified());
        // Registered before the flag is read, so that a signal sent in between
        // still wakes it.
        notified.as_mut().enable();
        if !self.is_triggered() {
            notified.await;
        }
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }

    /// A signal of its own for the waiters of one thread, and the future that fires
    /// it when this one fires (to be run on that thread). The future owns the new
    /// signal's trigger, so dropped unfinished it fires the signal too: no waiter is
    /// left waiting on a relay that is gone.
    ///
    /// Each poll of a waiter that a [`Notify`] has not woken yet takes the
    /// `Notify`'s lock, and a busy connection's task polls its shutdown waiter on
    /// every wake-up, several times a request. With every connection of every
    /// serving thread on the node's one signal, the threads took turns at that lock,
    /// and a thread preempted while holding it stalled the other thread's
    /// connections for the rest of a time slice: the load balancer's slowest
    /// requests under load (p99.9 8-10 ms where HAProxy had 5.5). One signal per
    /// serving thread is a lock only that thread's tasks take.
    pub fn relay(&self) -> (Shutdown, impl Future<Output = ()> + Send + 'static) {
        let (trigger, here) = channel();
        let node = self.clone();
        (here, async move {
            node.wait().await;
            trigger.fire();
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn stops(shutdown: &Shutdown) -> bool {
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn every_waiter_stops_on_fire_now_or_later() {
        let (trigger, shutdown) = channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = trigger.subscribe();
                tokio::spawn(async move { stops(&s).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!shutdown.is_triggered());
        trigger.fire();
        for waiter in waiters {
            assert!(waiter.await.unwrap(), "a waiter registered before the fire");
        }
        assert!(shutdown.is_triggered());
        assert!(stops(&shutdown).await, "a waiter after the fire");
        assert!(
            stops(&trigger.subscribe()).await,
            "a subscriber after the fire"
        );
    }

    #[tokio::test]
    async fn a_relayed_signal_fires_with_the_node_and_not_before() {
        let (trigger, shutdown) = channel();
        let (here, relay) = shutdown.relay();
        let relay = tokio::spawn(relay);
        let waiter = tokio::spawn({
            let here = here.clone();
            async move { stops(&here).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!here.is_triggered(), "fired before the node's signal");
        trigger.fire();
        assert!(waiter.await.unwrap(), "a waiter on the relayed signal");
        relay.await.unwrap();
        assert!(here.is_triggered());
    }

    #[tokio::test]
    async fn a_dropped_trigger_stops_its_waiters() {
        let (trigger, shutdown) = channel();
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { stops(&s).await }
        });
        tokio::task::yield_now().await;
        drop(trigger);
        assert!(waiter.await.unwrap());
        assert!(shutdown.is_triggered());
    }
}
