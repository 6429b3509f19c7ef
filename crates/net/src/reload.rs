//! Reloading a running node: re-reading its site file and applying what can change in
//! place, without dropping a connection.
//!
//! Two things ask for a reload: `POST /reload` on the admin listener (with the admin
//! token) and `SIGHUP`. Both go through one [`Trigger`], so reloads never overlap: a
//! single task per node ([`serve`]) takes them one at a time. For each it asks the
//! node's [`Source`] (the binary, which knows the site file) for the new
//! configuration and what changed, hands the configuration to the role, which swaps
//! its live settings, and only then tells the source the new file is the current
//! one. A file that does not parse, or a configuration the role cannot apply (an
//! unreadable certificate, say), changes nothing and the caller is told why.

use tokio::sync::{mpsc, oneshot};

/// What a reload answers: what changed (JSON, from the [`Source`]), or why nothing did.
pub type Outcome = Result<serde_json::Value, String>;

/// Asks the node's reload task for a reload. Cheap to clone: the admin listener and the
/// signal handler each hold one.
#[derive(Clone, Debug)]
pub struct Trigger(mpsc::Sender<oneshot::Sender<Outcome>>);

/// The reload task's end of a [`Trigger`].
#[derive(Debug)]
pub struct Requests(mpsc::Receiver<oneshot::Sender<Outcome>>);

/// A trigger and the requests it sends.
pub fn channel() -> (Trigger, Requests) {
    // A few waiting reloads at most: more would only repeat the same work.
    let (tx, rx) = mpsc::channel(4);
    (Trigger(tx), Requests(rx))
}

impl Trigger {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(reply)
            .await
            .map_err(|_| "the node is stopping; it takes no reload now".to_string())?;
        answer
            .await
            .map_err(|_| "the node stopped during the reload".to_string())?
    }
}

/// Where a node's new configuration comes from: the binary, which re-reads the site
/// file the node was started with.
pub trait Source<C>: Send + 'static {
    /// Reads the site file anew: the role's new configuration and what changed in it
    /// (as JSON, for the caller), or why the file cannot be used (its line and column
    /// when it does not parse). Changes nothing yet.
    fn prepare(&mut self) -> Result<(C, serde_json::Value), String>;
    /// The configuration [`Source::prepare`] gave was applied: the file read is now
    /// the current one (the next reload is compared with it).
    fn commit(&mut self);
}

/// Everything a role needs to take reloads: the trigger (for its admin listener), the
/// requests and where new configurations come from.
pub struct Reloads<C> {
    /// For the admin listener's `POST /reload`.
    pub trigger: Trigger,
    /// What the reload task takes.
    pub requests: Requests,
    /// The site file.
    pub source: Box<dyn Source<C>>,
}

/// Takes reloads one at a time until every [`Trigger`] is gone: prepares the new
/// configuration, `apply`s it (the role's swap; an error leaves the role as it was)
/// and commits it.
pub async fn serve<C: 'static>(reloads: Reloads<C>, apply: impl Fn(C) -> Result<(), String>) {
    let Reloads {
        trigger,
        mut requests,
        mut source,
    } = reloads;
    // The task's own trigger must not keep it alive; the role's copies do.
    drop(trigger);
    while let Some(reply) = requests.0.recv().await {
        let outcome = source.prepare().and_then(|(config, changes)| {
            apply(config)?;
            source.commit();
            Ok(changes)
        });
        match &outcome {
            Ok(changes) => tracing::info!("reloaded the site file: {changes}"),
            Err(why) => tracing::warn!("reload refused, the node keeps its configuration: {why}"),
        }
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbers {
        next: Vec<Result<u32, String>>,
        current: u32,
        pending: u32,
    }

    impl Source<u32> for Numbers {
        fn prepare(&mut self) -> Result<(u32, serde_json::Value), String> {
            let n = self.next.remove(0)?;
            self.pending = n;
            Ok((n, serde_json::json!({ "from": self.current, "to": n })))
        }
        fn commit(&mut self) {
            self.current = self.pending;
        }
    }

    #[tokio::test]
    async fn a_refused_configuration_is_not_committed() {
        let (trigger, requests) = channel();
        let source = Numbers {
            next: vec![Ok(2), Err("line 3, column 1: bad".into()), Ok(13), Ok(4)],
            current: 1,
            pending: 0,
        };
        let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = applied.clone();
        let task = tokio::spawn(serve(
            Reloads {
                trigger: trigger.clone(),
                requests,
                source: Box::new(source),
            },
            move |n: u32| {
                if n == 13 {
                    return Err("unlucky".into());
                }
                seen.lock().unwrap().push(n);
                Ok(())
            },
        ));
        assert_eq!(trigger.reload().await.unwrap()["to"], 2);
        assert!(trigger.reload().await.unwrap_err().contains("line 3"));
        assert_eq!(trigger.reload().await.unwrap_err(), "unlucky");
        // Compared with the last configuration applied, not the refused ones.
        let last = trigger.reload().await.unwrap();
        assert_eq!(
            (last["from"].as_u64(), last["to"].as_u64()),
            (Some(2), Some(4))
        );
        assert_eq!(*applied.lock().unwrap(), vec![2, 4]);
        drop(trigger);
        task.await.unwrap();
    }
}
