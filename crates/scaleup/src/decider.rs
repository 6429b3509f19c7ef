//! Automatic database failover: when the MariaDB primary is gone, the most advanced
//! replica is promoted (`db::failover::promote`), and the application servers follow it
//! by themselves (their monitor sends writes to the one writable server that replicates
//! from nobody).
//!
//! Exactly one decider at a time: every load balancer runs one, but it acts only while
//! its node holds the floating address, and checks that again right before it promotes.
//! The cluster's election already guarantees at most one active node once heartbeats
//! flow; in a split where both load balancers believe they are active, the second guard
//! holds: a primary is declared dead only after [`STRIKES`] checks in a row found it
//! unreachable *and* no replica still receiving from it. A primary that is alive is
//! still feeding at least one replica, so a decider cut off from it alone never promotes
//! (`db::failover::receiving_from`), and `promote` itself refuses in that case too.
//! After a failover the decider waits [`COOL_DOWN`] before another one (flapping between
//! two servers is worse than a pause); a person can always move the primary with
//! `scaleup db switchover`. An old primary that comes back (writable beside the primary)
//! is fenced at once and rejoins as a replica (`db::failover::rejoin`), unless it holds
//! transactions the primary lacks: then it stays out, read-only, and `status` says why.
//!
//! It needs administrator access to every database server: the managed servers of
//! `scaleup up` (over their Unix sockets, on this machine), or a site's own with the
//! failover accounts of `[database]`. Without either, failover is manual, as it says.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use db::failover::{NodeState, Topology};

/// Time between two looks at the database servers.
const CHECK: Duration = Duration::from_millis(500);
/// Checks in a row that find no reachable primary before it counts as gone.
pub const STRIKES: u32 = 3;
/// The wait after a failover before the next one may happen by itself.
pub const COOL_DOWN: Duration = Duration::from_secs(300);

/// The decider of one load balancer, and what it saw and did.
pub struct Decider {
    topology: Topology,
    state: Mutex<State>,
    failovers: AtomicU64,
    /// Promotions not made because a replica still received from the primary.
    held_back: AtomicU64,
    /// Promotions tried that failed.
    failed: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The primary as last seen (the site file's at start).
    primary: String,
    /// Checks in a row with no reachable primary.
    strikes: u32,
    /// Whether this node holds the floating address, so decides.
    deciding: bool,
    last: Option<Failover>,
    /// Why the last check did not promote, if it found no primary.
    waiting: Option<String>,
    /// Old primaries fenced and rejoined as replicas, oldest first.
    rejoined: Vec<String>,
    /// Old primaries fenced and kept out (they hold transactions the primary lacks), with
    /// why: a person must look at them, so this stays until this process ends.
    kept_out: Vec<(String, String)>,
}

#[derive(Clone)]
struct Failover {
    at: SystemTime,
    /// The end of its cool-down, on this process's clock.
    until: Instant,
    from: String,
    to: String,
    took: Duration,
    left_out: Vec<String>,
}

impl Decider {
    /// The decider for `topology`, whose primary is `primary` at start.
    pub fn new(topology: Topology, primary: &str) -> Arc<Decider> {
        Arc::new(Decider {
            topology,
            state: Mutex::new(State {
                primary: primary.to_string(),
                ..State::default()
            }),
            failovers: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Starts [`Decider::run`] on a thread of its own, with its own runtime, as the
    /// cluster member runs: a load balancer saturated with clients still looks at its
    /// database servers on time.
    pub fn spawn(
        self: &Arc<Self>,
        active: tokio::sync::watch::Receiver<bool>,
        stop: net::Shutdown,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let decider = self.clone();
        std::thread::Builder::new()
            .name("db-failover".into())
            .spawn(move || runtime.block_on(decider.run(active, stop)))?;
        Ok(())
    }

    /// Looks at the servers every [`CHECK`] while `active` says this node holds the
    /// floating address, and promotes when the primary is gone; ends with `stop`.
    async fn run(
        self: Arc<Self>,
        mut active: tokio::sync::watch::Receiver<bool>,
        stop: net::Shutdown,
    ) {
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => return,
            }
            let deciding = *active.borrow_and_update();
            {
                let mut state = self.state.lock().expect("decider lock");
                if state.deciding != deciding {
                    tracing::info!(
                        "database failover: {}",
                        if deciding {
                            "this load balancer holds the floating address: it decides"
                        } else {
                            "this load balancer does not hold the floating address: it only watches"
                        }
                    );
                }
                state.deciding = deciding;
                if !deciding {
                    state.strikes = 0;
                    state.waiting = None;
                    continue;
                }
            }
            let states = db::failover::survey(&self.topology).await;
            self.check(&states, &active).await;
        }
    }

    /// One look: the primary seen, or one more strike, and a promotion once the
    /// primary is gone for sure.
    async fn check(&self, states: &[NodeState], active: &tokio::sync::watch::Receiver<bool>) {
        let returned = self.returned(states);
        if !returned.is_empty() {
            if *active.borrow() {
                self.rejoin(returned).await;
            }
            return;
        }
        let Some(failed) = self.gone(states) else {
            return;
        };
        let Some(old) = self.topology.nodes.iter().find(|n| n.name == failed) else {
            return;
        };
        let feeding: Vec<String> = db::failover::receiving_from(states, old)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !feeding.is_empty() {
            let why = format!(
                "{failed} does not answer here, but {} still receive from it: it is alive \
                 (a partition between this load balancer and it); no promotion",
                feeding.join(", ")
            );
            let mut state = self.state.lock().expect("decider lock");
            if state.waiting.as_deref() != Some(why.as_str()) {
                tracing::warn!("database failover: {why}");
                self.held_back.fetch_add(1, Relaxed);
            }
            state.waiting = Some(why);
            return;
        }
        // The node may have lost the address while this check ran.
        if !*active.borrow() {
            return;
        }
        self.promote(failed).await;
    }

    /// Servers beside the current primary that are writable and replicate from nobody:
    /// an old primary come back, taking writes again if nobody stops it.
    fn returned(&self, states: &[NodeState]) -> Vec<String> {
        let state = self.state.lock().expect("decider lock");
        let primaries: Vec<&NodeState> = states.iter().filter(|s| s.is_primary()).collect();
        if primaries.len() < 2 || !primaries.iter().any(|s| s.name == state.primary) {
            return Vec::new();
        }
        primaries
            .iter()
            .filter(|s| s.name != state.primary)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Fences each returned server and has it rejoin as a replica of the primary; one
    /// holding transactions the primary lacks stays out (read-only, not replicating).
    async fn rejoin(&self, returned: Vec<String>) {
        let primary = self.state.lock().expect("decider lock").primary.clone();
        for name in returned {
            tracing::warn!(
                "database failover: {name} is back and writable beside the primary \
                 {primary}: fencing it, and rejoining it as a replica"
            );
            let outcome = db::failover::rejoin(&self.topology, &name, &primary).await;
            let mut state = self.state.lock().expect("decider lock");
            match outcome {
                Ok(()) => {
                    tracing::info!("database failover: {name} rejoined as a replica of {primary}");
                    state.rejoined.push(name);
                    state.waiting = None;
                }
                Err(e) => {
                    tracing::error!("database failover: {name} kept out: {e}");
                    state.kept_out.push((name, e.to_string()));
                }
            }
        }
    }

    /// The primary that is gone for sure, if it is: none answered for [`STRIKES`]
    /// checks, and the last failover's cool-down is over. Notes the primary seen, or
    /// why nothing is done yet.
    fn gone(&self, states: &[NodeState]) -> Option<String> {
        let primaries: Vec<&NodeState> = states.iter().filter(|s| s.is_primary()).collect();
        {
            let mut state = self.state.lock().expect("decider lock");
            if let [primary] = primaries.as_slice() {
                if state.primary != primary.name {
                    tracing::info!(
                        "database failover: the primary is {} (was {})",
                        primary.name,
                        state.primary
                    );
                    state.primary = primary.name.clone();
                }
                state.strikes = 0;
                state.waiting = None;
                return None;
            }
            if primaries.len() > 1 {
                // Two writable servers: a person must fence one; promoting would not help.
                let names: Vec<&str> = primaries.iter().map(|s| s.name.as_str()).collect();
                state.waiting = Some(format!(
                    "{} are all writable and replicate from nobody: fence all but one",
                    names.join(" and ")
                ));
                return None;
            }
            state.strikes += 1;
            if state.strikes < STRIKES {
                state.waiting = Some(format!(
                    "no primary answered ({} of {STRIKES} checks)",
                    state.strikes
                ));
                return None;
            }
            if let Some(last) = &state.last {
                if Instant::now() < last.until {
                    state.waiting = Some(format!(
                        "no primary, but the last failover was {} s ago: the next waits for \
                         the cool-down ({} s); `scaleup db switchover` moves it now",
                        last.at.elapsed().map_or(0, |d| d.as_secs()),
                        COOL_DOWN.as_secs()
                    ));
                    return None;
                }
            }
            Some(state.primary.clone())
        }
    }

    /// Promotes the most advanced replica in place of `failed`, and records it.
    async fn promote(&self, failed: String) {
        tracing::warn!(
            "database failover: the primary {failed} is gone ({STRIKES} checks, no replica \
             receives from it): promoting the most advanced replica"
        );
        match db::failover::promote(&self.topology, &failed).await {
            Ok(done) => {
                let left_out: Vec<String> = done
                    .left_out
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect();
                tracing::warn!(
                    "database failover: {} is the primary now (was {failed}), in {} ms; \
                     followers: {}{}",
                    done.primary,
                    done.took.as_millis(),
                    done.followers.join(", "),
                    if left_out.is_empty() {
                        String::new()
                    } else {
                        format!("; left out: {}", left_out.join("; "))
                    }
                );
                self.failovers.fetch_add(1, Relaxed);
                let mut state = self.state.lock().expect("decider lock");
                state.last = Some(Failover {
                    at: SystemTime::now(),
                    until: Instant::now() + COOL_DOWN,
                    from: failed,
                    to: done.primary.clone(),
                    took: done.took,
                    left_out,
                });
                state.primary = done.primary;
                state.strikes = 0;
                state.waiting = None;
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                tracing::error!("database failover: promotion failed: {e}");
                self.state.lock().expect("decider lock").waiting =
                    Some(format!("promotion failed: {e}"));
            }
        }
    }
}

impl lb::Beside for Decider {
    fn name(&self) -> &'static str {
        "database_failover"
    }

    fn status(&self) -> serde_json::Value {
        let state = self.state.lock().expect("decider lock");
        serde_json::json!({
            "deciding": state.deciding,
            "primary": state.primary,
            "failovers": self.failovers.load(Relaxed),
            "waiting": state.waiting,
            "rejoined": state.rejoined,
            "kept_out": state.kept_out.iter().map(|(name, why)| {
                serde_json::json!({ "server": name, "why": why })
            }).collect::<Vec<_>>(),
            "last": state.last.as_ref().map(|f| serde_json::json!({
                "at": httpdate::fmt_http_date(f.at),
                "from": f.from,
                "to": f.to,
                "took_ms": f.took.as_millis() as u64,
                "left_out": f.left_out,
            })),
        })
    }

    fn render_metrics(&self, node: &str, out: &mut String) {
        use std::fmt::Write;
        let deciding = self.state.lock().expect("decider lock").deciding;
        let _ = writeln!(
            out,
            "# HELP scaleup_db_failovers_total Automatic promotions of a replica this load \
             balancer made.\n# TYPE scaleup_db_failovers_total counter\n\
             scaleup_db_failovers_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_db_failover_held_back_total Promotions not made: the primary did \
             not answer here but a replica still received from it.\n\
             # TYPE scaleup_db_failover_held_back_total counter\n\
             scaleup_db_failover_held_back_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_db_failover_errors_total Promotions tried that failed.\n\
             # TYPE scaleup_db_failover_errors_total counter\n\
             scaleup_db_failover_errors_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_db_failover_deciding 1 while this load balancer decides \
             (it holds the floating address).\n# TYPE scaleup_db_failover_deciding gauge\n\
             scaleup_db_failover_deciding{{node=\"{node}\"}} {}",
            self.failovers.load(Relaxed),
            self.held_back.load(Relaxed),
            self.failed.load(Relaxed),
            u8::from(deciding)
        );
    }
}
