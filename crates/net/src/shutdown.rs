//! Graceful shutdown, as one signal every task can wait on.
//!
//! A node stops in two steps: listeners stop accepting, then open connections finish
//! the request they are on (bounded by a drain timeout). A `watch` channel carries
//! the signal because every task, now or later, sees the current value on subscribing.

use tokio::sync::watch;

/// The side that says "stop".
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// The side that waits for "stop". Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new pair: call [`Trigger::fire`] to stop everything holding a [`Shutdown`].
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every holder of the paired [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// A new waiter on this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown was asked for (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger is gone, which also means: stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
