//! What every role's process runs, in one place: its HTTP listeners served by its
//! handler, its admin listener, the reloads it takes, until shutdown; then the drain,
//! and every task joined. The web and application servers are this and their
//! handler; the load balancer adds its cluster and floating listeners around it.
//!
//! Where each operation plugs in: a reload through [`Node::reloads`] (its trigger is
//! the role's, for `POST /reload`), the drain through the [`Shutdown`] every listener
//! watches (`server`), and an upgrade from the outside (`handover`): the listeners
//! served here may be sockets taken over from the node's previous process.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::Report;
use crate::server::{Handler, Limits, Transport};
use crate::{Metrics, Shutdown};

/// A node's listeners.
pub struct Listeners {
    /// Plain HTTP.
    pub http: TcpListener,
    /// HTTPS ended here, with how its connections open (TLS, PROXY protocol).
    pub https: Option<(TcpListener, Transport)>,
    /// Operators: `/healthz`, `/metrics`, `/status` and the admin writes.
    pub admin: TcpListener,
}

/// One role's node: its handler (which also reports on the admin listener), its
/// counters, its connection limits, and when it stops.
pub struct Node<R> {
    role: Arc<R>,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: Shutdown,
    reload_task: Option<JoinHandle<()>>,
}

impl<R: Handler + Report> Node<R> {
    pub fn new(role: Arc<R>, metrics: Arc<Metrics>, limits: Limits, shutdown: Shutdown) -> Self {
        Node {
            role,
            metrics,
            limits,
            shutdown,
            reload_task: None,
        }
    }

    /// Takes `reloads` (if any) one at a time, `apply`ing each new configuration.
    pub fn reloads<C: Send + 'static>(
        mut self,
        reloads: Option<crate::reload::Reloads<C>>,
        apply: impl Fn(C) -> Result<(), String> + Send + 'static,
    ) -> Self {
        self.reload_task = reloads.map(|r| tokio::spawn(crate::reload::serve(r, apply)));
        self
    }

    /// Serves `listeners` until shutdown, then drains them and returns when every
    /// connection is done (or the drain timeout passed).
    pub async fn serve(self, listeners: Listeners) -> anyhow::Result<()> {
        let Node {
            role,
            metrics,
            limits,
            shutdown,
            reload_task,
        } = self;
        let admin_task = tokio::spawn(crate::admin::serve_admin(
            listeners.admin,
            role.clone(),
            shutdown.clone(),
        ));
        let https_task = listeners.https.map(|(listener, transport)| {
            tokio::spawn(crate::server::serve_with(
                listener,
                transport,
                limits.clone(),
                role.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        });
        crate::server::serve(listeners.http, limits, role, metrics, shutdown).await?;
        if let Some(task) = https_task {
            task.await??;
        }
        admin_task.await??;
        if let Some(task) = reload_task {
            // Its triggers are gone with the listeners (the signal handler's with the
            // process): stop it rather than wait.
            task.abort();
        }
        Ok(())
    }
}
