//! Graceful shutdown, as one signal every task can wait on.
//!
//! A node stops in two steps: listeners stop accepting, then open connections finish
//! the request they are on (bounded by a drain timeout). A `watch` channel carries
//! the signal because every task, now or later, sees the current value on subscribing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// The side that says "stop".
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
    fired: Arc<AtomicBool>,
}

/// The side that waits for "stop". Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// The same news as a plain flag: [`Shutdown::is_triggered`] is asked on every
    /// request of a draining-aware listener, and an atomic load costs no lock.
    fired: Arc<AtomicBool>,
}

/// A new pair: call [`Trigger::fire`] to stop everything holding a [`Shutdown`].
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let fired = Arc::new(AtomicBool::new(false));
    (
        Trigger {
            tx,
            fired: fired.clone(),
        },
        Shutdown { rx, fired },
    )
}

impl Trigger {
    /// Tells every holder of the paired [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }

    /// A new waiter on this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            fired: self.fired.clone(),
        }
    }
}

impl Shutdown {
    /// Resolves once shutdown was asked for (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone, which also means: stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}
