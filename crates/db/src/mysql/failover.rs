//! Failover building blocks for a MariaDB primary and its GTID replicas: promotion of the
//! most advanced replica when the primary is gone, a planned switchover, fencing, and the
//! rejoin of a returning old primary. Whoever decides (one decider at a time: the caller's
//! business, not this module's) calls these with administrator access to every server;
//! the application's [`crate::Db`] only follows: its monitor moves writes to the one
//! writable server that replicates from nobody.
//!
//! The rules that keep data whole:
//!
//! - **Semi-synchronous replication** ([`enable_semi_sync`]): with
//!   `rpl_semi_sync_master_wait_point=AFTER_SYNC` a commit returns to the client only after
//!   a replica has the transaction in its relay log, so the most advanced replica holds
//!   every acknowledged write. What happens when no replica acknowledges in time is the
//!   site's choice ([`OnNoReplicaAck`]).
//! - **Promotion** ([`promote`]) picks the replica that *received* the most (its
//!   `Gtid_IO_Pos`, by GTID), lets every replica apply its relay log first, and only then
//!   compares: what a replica received is what it will have.
//! - **Only one writable server**: the old primary is fenced (`read_only=1`) before a
//!   switchover and, best effort, before a promotion; a returning old primary is fenced
//!   before anything else ([`rejoin`]), and kept out when it holds transactions the new
//!   primary lacks (errant GTIDs), which are never merged.
//!
//! MariaDB only: GTIDs here are MariaDB's `domain-server-seq`, and the statements
//! (`MASTER_GTID_WAIT`, `MASTER_USE_GTID`, `RESET SLAVE ALL`) are MariaDB's.

use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Row};

pub use super::gtid::{Gtid, GtidList};
use super::Flavor;
use crate::DbError;

/// How long connecting to a server for administration may take before it counts as
/// unreachable. Short: a decider must not stall on a dead host, and every look at one
/// (three before a promotion, two more inside it) waits this long. A live server on a
/// LAN answers within milliseconds; one too slow to is not promoted away from while a
/// replica still receives from it (the partition guard), so a short wait is safe. 1 s
/// against 2 s cut the rehearsal's failover after a pulled cable from about 13.7 s to
/// about 10.5 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a statement of this module may take (a `MASTER_GTID_WAIT` has its own bound).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a promotion waits for a follower to connect to the new primary as an
/// acknowledging replica before making it writable.
const ACK_CLIENT_WAIT: Duration = Duration::from_secs(2);

/// How many times a promotion re-reads what a replica received while waiting for it to
/// apply that: a fenced old primary may still send the commits it had in flight.
const DRAIN_ROUNDS: usize = 3;

/// How long a rejoined server may take to run its replication threads.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write waits for a replica's acknowledgement, under
/// [`OnNoReplicaAck::Fallback`], before the primary goes on without one.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(1);

/// The longest `rpl_semi_sync_master_timeout` MariaDB takes (in milliseconds, ~49 days):
/// in effect, wait for ever.
const WAIT_FOREVER_MS: u64 = u32::MAX as u64;

/// What the primary does when no replica acknowledges a write (all replicas down or
/// behind): the site file's `[database] on_no_replica_ack`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnNoReplicaAck {
    /// Writes wait until a replica acknowledges: no acknowledged write can be lost, and
    /// with no replica up the site takes no writes (the requests time out).
    Wait,
    /// After [`FALLBACK_AFTER`] the primary stops waiting and replicates asynchronously
    /// until a replica catches up again: the site keeps taking writes, but those made
    /// while no replica acknowledged are lost if the primary dies before one has them.
    #[default]
    Fallback,
}

impl OnNoReplicaAck {
    /// `rpl_semi_sync_master_timeout`, in milliseconds.
    fn timeout_ms(self) -> u64 {
        match self {
            OnNoReplicaAck::Wait => WAIT_FOREVER_MS,
            OnNoReplicaAck::Fallback => FALLBACK_AFTER.as_millis() as u64,
        }
    }

    /// `rpl_semi_sync_master_wait_no_slave`: whether a commit waits with no replica
    /// connected to acknowledge it. Under `Fallback`, no: the wait could only end in the
    /// fallback, [`FALLBACK_AFTER`] later, so the first write on a primary just promoted
    /// with no followers (its old primary dead) took a second. Nothing is less durable:
    /// with no replica connected, no write can be acknowledged by one either way.
    fn wait_no_replica(self) -> &'static str {
        match self {
            OnNoReplicaAck::Wait => "ON",
            OnNoReplicaAck::Fallback => "OFF",
        }
    }
}

/// One database server as the decider reaches it.
#[derive(Clone, Debug)]
pub struct Node {
    /// `primary`, `replica1`, ...: the names the site file and [`crate::ServerStats`] use.
    pub name: String,
    /// Where the other servers reach it to replicate (`CHANGE MASTER TO MASTER_HOST`).
    pub host: String,
    pub port: u16,
    /// An account allowed to administer it (`SUPER`, or `READ_ONLY ADMIN`,
    /// `REPLICATION SLAVE ADMIN` and `BINLOG ADMIN`), and how to reach it.
    pub admin: MySqlConnectOptions,
}

impl Node {
    /// A server administered over TCP as `user` (a site's own servers; the managed ones
    /// come from `managed::topology`).
    pub fn tcp(name: &str, host: &str, port: u16, user: &str, password: &str) -> Node {
        Node {
            name: name.to_owned(),
            host: host.to_owned(),
            port,
            admin: MySqlConnectOptions::new()
                .host(host)
                .port(port)
                .username(user)
                .password(password),
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn error(&self, problem: impl Into<String>, fix: impl Into<String>) -> DbError {
        DbError::Setup {
            server: self.name.clone(),
            address: self.address(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    async fn connect(&self) -> Result<MySqlConnection, DbError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&self.admin))
            .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.error(
                format!("cannot connect as an administrator ({e})"),
                "check that it runs and that the administrator account may log in",
            )),
            Err(_) => Err(self.error(
                format!("does not answer within {CONNECT_TIMEOUT:?}"),
                "check that it runs and is reachable",
            )),
        }
    }
}

/// The servers and how they replicate from each other.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Every server: the primary and its replicas, in any order.
    pub nodes: Vec<Node>,
    /// The account replicas use to read the primary's binary log; it exists on every
    /// server (it was made on the first primary and replicated).
    pub replication_user: String,
    pub replication_password: String,
    /// Set on a new primary, so a promotion keeps the site's durability choice.
    pub on_no_replica_ack: OnNoReplicaAck,
    /// How long a replica may take to apply what it received (promotion) or to catch up
    /// with the old primary (switchover) before the step gives up.
    pub catch_up_timeout: Duration,
}

impl Topology {
    fn node(&self, name: &str) -> Result<&Node, DbError> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            DbError::Setup {
                server: name.to_owned(),
                address: String::new(),
                problem: "is not a server of this topology".into(),
                fix: format!("name one of: {}", names.join(", ")),
            }
        })
    }
}

/// What one server is, as [`survey`] saw it.
#[derive(Clone, Debug)]
pub struct NodeState {
    pub name: String,
    /// Why it could not be reached, if it could not; the fields below are then defaults.
    pub problem: Option<String>,
    pub read_only: bool,
    /// `host:port` of the server it replicates from, if it has replication configured.
    pub replicates_from: Option<String>,
    /// Both replication threads run.
    pub replicating: bool,
    /// Its IO thread is connected to the server it replicates from
    /// (`Slave_IO_Running: Yes`): that server is alive as far as this one can tell.
    pub receiving: bool,
    /// `@@gtid_current_pos`: everything it has, written here or replicated.
    pub current_pos: GtidList,
}

impl NodeState {
    /// Writable and replicating from nobody: what a primary is.
    pub fn is_primary(&self) -> bool {
        self.problem.is_none() && !self.read_only && self.replicates_from.is_none()
    }
}

/// The replicas that still receive from `primary` (their IO thread is connected to it).
/// A decider that cannot reach the primary must not promote while this is not empty: the
/// primary is alive, and only the decider is cut off from it (a partition).
pub fn receiving_from<'s>(states: &'s [NodeState], primary: &Node) -> Vec<&'s str> {
    let address = primary.address();
    states
        .iter()
        .filter(|s| s.receiving && s.replicates_from.as_deref() == Some(address.as_str()))
        .map(|s| s.name.as_str())
        .collect()
}

/// Every server's role and position, for the decider and `status`. Unreachable servers
/// are listed with their problem.
pub async fn survey(topology: &Topology) -> Vec<NodeState> {
    futures_util::future::join_all(topology.nodes.iter().map(|node| async move {
        let state = async {
            let mut conn = node.connect().await?;
            let (read_only, current): (i64, String) = timed(
                node,
                "reading its role",
                sqlx::query_as(
                    "SELECT CAST(@@GLOBAL.read_only AS SIGNED), \
                     CAST(@@GLOBAL.gtid_current_pos AS CHAR)",
                )
                .fetch_one(&mut conn),
            )
            .await?;
            let status = slave_status(node, &mut conn).await?;
            let _ = conn.close().await;
            Ok::<_, DbError>((read_only, current, status))
        }
        .await;
        match state {
            Ok((read_only, current, status)) => NodeState {
                name: node.name.clone(),
                problem: None,
                read_only: read_only != 0,
                replicates_from: status.as_ref().map(|s| s.master.clone()),
                receiving: status.as_ref().is_some_and(|s| s.io_running),
                replicating: status.is_some_and(|s| s.io_running && s.sql_running),
                current_pos: GtidList::parse(&current).unwrap_or_default(),
            },
            Err(e) => NodeState {
                name: node.name.clone(),
                problem: Some(e.to_string()),
                read_only: false,
                replicates_from: None,
                replicating: false,
                receiving: false,
                current_pos: GtidList::default(),
            },
        }
    }))
    .await
}

/// What a promotion or switchover did.
#[derive(Clone, Debug)]
pub struct Promotion {
    /// The server that takes writes now.
    pub primary: String,
    /// The server that took them before.
    pub previous: String,
    /// The new primary's `gtid_current_pos` when it became writable.
    pub position: GtidList,
    /// The servers now replicating from the new primary.
    pub followers: Vec<String>,
    /// Servers that could not be reached or re-pointed, with why: an operator (or a later
    /// [`rejoin`]) must deal with them.
    pub left_out: Vec<(String, String)>,
    /// How long the whole step took.
    pub took: Duration,
}

/// Makes a server read-only, so nothing but an administrator can write to it. The first
/// thing done to an old primary, before anything can write to it again.
pub async fn fence(node: &Node) -> Result<(), DbError> {
    let mut conn = node.connect().await?;
    exec(node, &mut conn, "SET GLOBAL read_only = 1").await?;
    let _ = conn.close().await;
    tracing::warn!(server = %node.name, "database server fenced: read-only");
    Ok(())
}

/// Turns semi-synchronous replication on for a server in its role: as a primary, its
/// commits wait (after the binary log is synced, before the commit is visible) for a
/// replica's acknowledgement, as `policy` says; as a replica, its IO thread acknowledges
/// (the thread is restarted so the setting takes effect).
pub async fn enable_semi_sync(
    node: &Node,
    as_primary: bool,
    policy: OnNoReplicaAck,
) -> Result<(), DbError> {
    let mut conn = node.connect().await?;
    if as_primary {
        semi_sync_primary(node, &mut conn, policy).await?;
    } else {
        exec(
            node,
            &mut conn,
            "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
        )
        .await?;
        if slave_status(node, &mut conn).await?.is_some() {
            exec(node, &mut conn, "STOP SLAVE IO_THREAD").await?;
            exec(node, &mut conn, "START SLAVE IO_THREAD").await?;
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn semi_sync_primary(
    node: &Node,
    conn: &mut MySqlConnection,
    policy: OnNoReplicaAck,
) -> Result<(), DbError> {
    exec(
        node,
        conn,
        &format!(
            "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC, \
             rpl_semi_sync_master_timeout = {}, rpl_semi_sync_master_wait_no_slave = {}, \
             rpl_semi_sync_master_enabled = ON",
            policy.timeout_ms(),
            policy.wait_no_replica()
        ),
    )
    .await
}

/// Promotes the most advanced reachable replica after the primary `failed` is gone.
///
/// 0. refused while any replica still receives from `failed` ([`receiving_from`]): it is
///    alive, and promoting would make two primaries;
/// 1. `failed` is fenced if it still answers (best effort: it is presumed dead), while
/// 2. every reachable replica applies its relay log up to what it received
///    (`MASTER_GTID_WAIT` on its `Gtid_IO_Pos`, at most `catch_up_timeout`);
/// 3. the replica whose position covers the others' is chosen (with several GTID domains
///    and no such replica, the largest total);
/// 4. it stops replicating for good (`RESET SLAVE ALL`), commits durably and waits for a
///    replica's acknowledgement as the site says; the other replicas are pointed at it
///    (`MASTER_USE_GTID=slave_pos`), and only then is it made writable.
///
/// A replica that cannot be reached, or does not apply its relay log in time, is left
/// out (and listed in [`Promotion::left_out`]); with none left, nothing is changed, and
/// the error says so. If a replica left out for not applying in
/// time has *received* more than the chosen one, the promotion is refused: what it holds
/// may include acknowledged writes, which the new primary would lose. A replica that
/// cannot be reached at all may hold such writes too, and nobody can tell: the decider
/// should rather wait for it while it may come back.
pub async fn promote(topology: &Topology, failed: &str) -> Result<Promotion, DbError> {
    let started = Instant::now();
    let old = topology.node(failed)?;
    let feeding = receiving_from(&survey(topology).await, old)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    if !feeding.is_empty() {
        return Err(old.error(
            format!(
                "still sends its writes to {}: it is alive, and only the caller is cut off \
                 from it (a partition), or it died a moment ago",
                feeding.join(", ")
            ),
            "promote only once no replica receives from it (replicas notice a dead primary \
             within slave_net_timeout); to move a live primary, use a switchover",
        ));
    }
    let fenced = async {
        if let Ok(Ok(())) = tokio::time::timeout(CONNECT_TIMEOUT, fence(old)).await {
            tracing::warn!(server = %old.name, "the failed primary still answered; it is fenced");
        }
    };
    // All at once: the slowest replica's relay log, not their sum, bounds the wait.
    let drained = futures_util::future::join_all(
        topology
            .nodes
            .iter()
            .filter(|n| n.name != failed)
            .map(|node| async move { (node, drain_relay_log(topology, node).await) }),
    );
    // The fence is tried while the replicas drain: a host that drops packets (no refusal,
    // no "unreachable") costs the fence its whole connect timeout, which came before the
    // drain. Both end before anything is made writable.
    let ((), drained) = tokio::join!(fenced, drained);
    let mut left_out = Vec::new();
    let mut ready = Vec::new();
    let mut received_more = Vec::new();
    for (node, result) in drained {
        match result {
            Ok((conn, pos)) => ready.push((node, conn, pos)),
            Err((e, received)) => {
                tracing::warn!(server = %node.name, error = %e, "replica left out of the promotion");
                left_out.push((node.name.clone(), e.to_string()));
                if let Some(received) = received {
                    received_more.push((node, received));
                }
            }
        }
    }
    let Some(best) = most_advanced(&ready) else {
        return Err(old.error(
            "is gone and no replica can take its place (every replica is unreachable or \
             did not apply its relay log in time)",
            format!(
                "bring a replica back (left out: {}), then promote again",
                left_out
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    };
    let (chosen, mut conn, pos) = ready.swap_remove(best);
    if let Some((node, received)) = received_more.iter().find(|(_, r)| !pos.covers(r)) {
        return Err(node.error(
            format!(
                "received transactions (up to {received}) that no replica ready to be \
                 promoted has ({} is at {pos}); promoting now would lose them, and some may \
                 have been acknowledged",
                chosen.name
            ),
            "let it apply its relay log (SHOW SLAVE STATUS: Last_SQL_Error; START SLAVE \
             SQL_THREAD), then promote again",
        ));
    }
    let others: Vec<(&Node, MySqlConnection)> = ready.into_iter().map(|(n, c, _)| (n, c)).collect();
    finish_promotion(topology, chosen, &mut conn, others, old, left_out, started).await
}

/// Moves the primary role on purpose, for maintenance: the current primary (the one
/// writable server that replicates from nobody) is made read-only first, `target` (or,
/// when `None`, the most advanced replica) waits until it has everything the old primary
/// wrote, is promoted as in [`promote`], and the old primary becomes its replica. Writes
/// are refused only between the first and the last step; nothing is lost, because the
/// old primary takes no write once read-only. If the target does not catch up within
/// `catch_up_timeout`, the old primary is made writable again and nothing else changed.
pub async fn switchover(topology: &Topology, target: Option<&str>) -> Result<Promotion, DbError> {
    let started = Instant::now();
    let states = survey(topology).await;
    let primaries: Vec<&NodeState> = states.iter().filter(|s| s.is_primary()).collect();
    let [current] = primaries.as_slice() else {
        let names: Vec<&str> = primaries.iter().map(|s| s.name.as_str()).collect();
        return Err(DbError::Setup {
            server: names.join(", "),
            address: String::new(),
            problem: format!(
                "a switchover needs exactly one writable primary, and {} servers are",
                names.len()
            ),
            fix: "with none, promote a replica (failover); with several, fence all but one".into(),
        });
    };
    let old = topology.node(&current.name)?;
    let target = match target {
        Some(name) => topology.node(name)?,
        None => {
            let replicas: Vec<&NodeState> = states
                .iter()
                .filter(|s| s.problem.is_none() && s.name != old.name && s.replicating)
                .collect();
            let best = replicas
                .iter()
                .copied()
                .find(|s| {
                    replicas
                        .iter()
                        .all(|o| s.current_pos.covers(&o.current_pos))
                })
                .or_else(|| {
                    replicas
                        .iter()
                        .copied()
                        .max_by_key(|s| s.current_pos.total())
                })
                .ok_or_else(|| {
                    old.error(
                        "has no replica that replicates to switch over to",
                        "start a replica, or name one",
                    )
                })?;
            topology.node(&best.name)?
        }
    };
    if target.name == old.name {
        return Err(old.error(
            "is already the primary",
            "name a replica as the switchover's target",
        ));
    }

    let mut old_conn = old.connect().await?;
    exec(old, &mut old_conn, "SET GLOBAL read_only = 1").await?;
    let caught_up = async {
        let final_pos: String = timed(
            old,
            "reading its final position",
            sqlx::query_scalar("SELECT CAST(@@GLOBAL.gtid_binlog_pos AS CHAR)")
                .fetch_one(&mut old_conn),
        )
        .await?;
        let mut conn = target.connect().await?;
        gtid_wait(topology, target, &mut conn, &final_pos).await?;
        exec(target, &mut conn, "STOP SLAVE").await?;
        Ok::<_, DbError>(conn)
    }
    .await;
    let mut conn = match caught_up {
        Ok(conn) => conn,
        Err(e) => {
            // Leave the site as it was: the old primary takes writes again.
            if let Err(undo) = exec(old, &mut old_conn, "SET GLOBAL read_only = 0").await {
                tracing::error!(server = %old.name, error = %undo,
                    "could not make the old primary writable again after a failed switchover");
            }
            return Err(e);
        }
    };
    let mut others = Vec::new();
    let mut left_out = Vec::new();
    for node in topology
        .nodes
        .iter()
        .filter(|n| n.name != target.name && n.name != old.name)
    {
        match node.connect().await {
            Ok(c) => others.push((node, c)),
            Err(e) => left_out.push((node.name.clone(), e.to_string())),
        }
    }
    // The old primary follows too: it has nothing the target lacks (it was read-only
    // while the target caught up), so it rejoins without an errant-GTID check.
    others.push((old, old_conn));
    finish_promotion(topology, target, &mut conn, others, old, left_out, started).await
}

/// Fences a returning old primary (or any server that went away) and makes it a replica
/// of `primary`. First `read_only=1`, before anything else; then its binary-log state is
/// compared with the primary's: if it holds transactions the primary lacks (errant
/// GTIDs, written after the failover or never acknowledged before it), it stays fenced
/// and out of replication, and the error names them; they are never merged. Otherwise it
/// replicates from `primary` (`MASTER_USE_GTID=slave_pos`) and this returns once both of
/// its replication threads run.
pub async fn rejoin(topology: &Topology, returning: &str, primary: &str) -> Result<(), DbError> {
    let node = topology.node(returning)?;
    let new = topology.node(primary)?;
    let mut conn = node.connect().await?;
    exec(node, &mut conn, "SET GLOBAL read_only = 1").await?;
    tracing::warn!(server = %node.name, "returning database server fenced: read-only");

    let mut primary_conn = new.connect().await?;
    let theirs = binlog_state(new, &mut primary_conn).await?;
    let _ = primary_conn.close().await;
    let ours = binlog_state(node, &mut conn).await?;
    let errant = ours.beyond(&theirs);
    if !errant.is_empty() {
        let list = GtidList(errant).to_string();
        tracing::error!(server = %node.name, errant = %list, primary = %new.name,
            "returning database server holds transactions the primary lacks; kept out");
        return Err(node.error(
            format!(
                "holds transactions the primary {} lacks (errant GTIDs {list}); it is kept \
                 out: read-only and not replicating",
                new.name
            ),
            format!(
                "look at them (mariadb-binlog on its binary log), carry over by hand what \
                 must be kept, then rebuild it from {} (a fresh data directory or a dump) \
                 and rejoin it; never let it replicate as it is",
                new.name
            ),
        ));
    }
    if slave_status(node, &mut conn).await?.is_some() {
        exec(node, &mut conn, "STOP SLAVE").await?;
    }
    // It may have written transactions of its own as the primary: its replication
    // position starts from everything it has, so nothing is fetched twice.
    exec(
        node,
        &mut conn,
        "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos",
    )
    .await?;
    exec(
        node,
        &mut conn,
        "SET GLOBAL rpl_semi_sync_master_enabled = OFF, rpl_semi_sync_slave_enabled = ON",
    )
    .await?;
    change_master(topology, node, &mut conn, new).await?;
    let deadline = Instant::now() + REJOIN_TIMEOUT;
    loop {
        let status = slave_status(node, &mut conn).await?;
        if status
            .as_ref()
            .is_some_and(|s| s.io_running && s.sql_running)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(node.error(
                format!(
                    "did not start replicating from {} within {REJOIN_TIMEOUT:?} ({})",
                    new.name,
                    status.map(|s| s.error).unwrap_or_default()
                ),
                "see its error log; it stays read-only",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close().await;
    tracing::info!(server = %node.name, primary = %new.name, "database server rejoined as a replica");
    Ok(())
}

/// Waits until a replica has applied everything it received (its `Gtid_IO_Pos`), and
/// returns the connection and its position then; on failure, what it received, when
/// that is known.
///
/// Its IO thread is left alone: the old primary is dead or fenced, so little or nothing
/// more arrives, and the received position is read again after each wait until it holds
/// still. Stopping the IO thread would be worse than useless: MariaDB, replicating by
/// GTID, discards the relay log when a SQL thread starts while the IO thread is stopped,
/// so a replica whose SQL thread an operator must restart would lose what it received
/// (observed on 10.11), and with it writes only it had acknowledged.
async fn drain_relay_log(
    topology: &Topology,
    node: &Node,
) -> Result<(MySqlConnection, GtidList), (DbError, Option<GtidList>)> {
    let unknown = |e: DbError| (e, None);
    let mut conn = node.connect().await.map_err(unknown)?;
    let Some(status) = slave_status(node, &mut conn).await.map_err(unknown)? else {
        return Err(unknown(node.error(
            "is no replica (it has no replication configured)",
            "only a replica can be promoted",
        )));
    };
    let mut received = status.io_pos;
    // Bounded: each round waits at most `catch_up_timeout`, and a fenced primary sends
    // no more than the commits it had in flight.
    for _ in 0..DRAIN_ROUNDS {
        if !received.is_empty() {
            if let Err(e) = gtid_wait(topology, node, &mut conn, &received).await {
                return Err((e, GtidList::parse(&received).ok()));
            }
        }
        let now = slave_status(node, &mut conn)
            .await
            .map_err(unknown)?
            .map(|s| s.io_pos)
            .unwrap_or_default();
        if now == received {
            break;
        }
        received = now;
    }
    let pos: String = timed(
        node,
        "reading its position",
        sqlx::query_scalar("SELECT CAST(@@GLOBAL.gtid_slave_pos AS CHAR)").fetch_one(&mut conn),
    )
    .await
    .map_err(unknown)?;
    let pos = GtidList::parse(&pos).map_err(|e| unknown(node.error(e, "report this as a bug")))?;
    Ok((conn, pos))
}

/// The index of the replica whose position covers every other's; with none (several GTID
/// domains advanced differently), the one with the largest total.
fn most_advanced(ready: &[(&Node, MySqlConnection, GtidList)]) -> Option<usize> {
    let covering = ready
        .iter()
        .position(|(_, _, pos)| ready.iter().all(|(_, _, other)| pos.covers(other)));
    covering.or_else(|| {
        ready
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, _, pos))| pos.total())
            .map(|(i, _)| i)
    })
}

/// The common end of [`promote`] and [`switchover`]: `chosen` stops replicating, the
/// `others` replicate from it, and it becomes writable last.
async fn finish_promotion(
    topology: &Topology,
    chosen: &Node,
    conn: &mut MySqlConnection,
    others: Vec<(&Node, MySqlConnection)>,
    old: &Node,
    mut left_out: Vec<(String, String)>,
    started: Instant,
) -> Result<Promotion, DbError> {
    exec(chosen, conn, "STOP SLAVE").await?;
    exec(chosen, conn, "RESET SLAVE ALL").await?;
    // A replica flushed its redo log about once a second; a primary must not lose an
    // acknowledged commit to a power cut.
    exec(
        chosen,
        conn,
        "SET GLOBAL innodb_flush_log_at_trx_commit = 1, sync_binlog = 1",
    )
    .await?;
    semi_sync_primary(chosen, conn, topology.on_no_replica_ack).await?;
    let mut followers = Vec::new();
    for (node, mut c) in others {
        let pointed = async {
            if slave_status(node, &mut c).await?.is_some() {
                exec(node, &mut c, "STOP SLAVE").await?;
            }
            exec(
                node,
                &mut c,
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF, rpl_semi_sync_slave_enabled = ON",
            )
            .await?;
            if node.name == old.name {
                // The old primary's own writes are in its binary log, not its
                // replication position.
                exec(
                    node,
                    &mut c,
                    "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos",
                )
                .await?;
            }
            change_master(topology, node, &mut c, chosen).await
        }
        .await;
        match pointed {
            Ok(()) => followers.push(node.name.clone()),
            Err(e) => {
                tracing::warn!(server = %node.name, error = %e, "could not point a replica at the new primary");
                left_out.push((node.name.clone(), e.to_string()));
            }
        }
        let _ = c.close().await;
    }
    if !followers.is_empty() {
        await_acknowledging_replica(chosen, conn).await;
    }
    exec(chosen, conn, "SET GLOBAL read_only = 0").await?;
    let position: String = timed(
        chosen,
        "reading its position",
        sqlx::query_scalar("SELECT CAST(@@GLOBAL.gtid_current_pos AS CHAR)").fetch_one(&mut *conn),
    )
    .await?;
    let promotion = Promotion {
        primary: chosen.name.clone(),
        previous: old.name.clone(),
        position: GtidList::parse(&position).unwrap_or_default(),
        followers,
        left_out,
        took: started.elapsed(),
    };
    tracing::warn!(primary = %promotion.primary, previous = %promotion.previous,
        position = %promotion.position, followers = ?promotion.followers,
        left_out = ?promotion.left_out, took = ?promotion.took, "database primary promoted");
    Ok(promotion)
}

/// Waits (at most [`ACK_CLIENT_WAIT`]) until a replica that acknowledges is connected to
/// the new primary, so its first writes do not wait out the semi-synchronous timeout for
/// want of one. Not finding one is only logged: the writes then fall back (or wait) as
/// the site chose.
async fn await_acknowledging_replica(primary: &Node, conn: &mut MySqlConnection) {
    let deadline = Instant::now() + ACK_CLIENT_WAIT;
    loop {
        let clients: Result<(String, String), _> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
                .fetch_one(&mut *conn)
                .await;
        if clients.is_ok_and(|(_, n)| n.parse::<u32>().unwrap_or(0) > 0) {
            return;
        }
        if Instant::now() > deadline {
            tracing::warn!(server = %primary.name,
                "no acknowledging replica connected to the new primary yet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Points `node` at `primary` by GTID and starts replicating.
async fn change_master(
    topology: &Topology,
    node: &Node,
    conn: &mut MySqlConnection,
    primary: &Node,
) -> Result<(), DbError> {
    let sql = format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, \
         MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
        quote(&primary.host),
        primary.port,
        quote(&topology.replication_user),
        quote(&topology.replication_password),
    );
    exec(node, conn, &sql).await?;
    exec(node, conn, "START SLAVE").await
}

/// Waits until `node` has applied `pos`, at most the topology's `catch_up_timeout`.
async fn gtid_wait(
    topology: &Topology,
    node: &Node,
    conn: &mut MySqlConnection,
    pos: &str,
) -> Result<(), DbError> {
    let limit = topology.catch_up_timeout;
    match Flavor::MariaDb.applied_within(conn, pos, limit).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(node.error(
            format!("did not apply up to {pos} within {limit:?}"),
            "check its replication (SHOW SLAVE STATUS: Last_SQL_Error) and retry",
        )),
        Err(e) => Err(node.error(
            format!("waiting for {pos} failed ({e})"),
            "check its replication and retry",
        )),
    }
}

/// `@@gtid_binlog_state`: the last GTID of every domain and server in its binary log.
async fn binlog_state(node: &Node, conn: &mut MySqlConnection) -> Result<GtidList, DbError> {
    let text: String = timed(
        node,
        "reading its binary-log state",
        sqlx::query_scalar("SELECT CAST(@@GLOBAL.gtid_binlog_state AS CHAR)").fetch_one(conn),
    )
    .await?;
    GtidList::parse(&text).map_err(|e| node.error(e, "report this as a bug"))
}

/// What `SHOW SLAVE STATUS` says, when replication is configured.
struct SlaveStatus {
    /// `host:port` it replicates from.
    master: String,
    io_running: bool,
    sql_running: bool,
    /// `Gtid_IO_Pos`: what the IO thread has received.
    io_pos: String,
    error: String,
}

async fn slave_status(
    node: &Node,
    conn: &mut MySqlConnection,
) -> Result<Option<SlaveStatus>, DbError> {
    let row = timed(
        node,
        "reading its replica status",
        sqlx::query("SHOW SLAVE STATUS").fetch_optional(conn),
    )
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let text = |col: &str| super::status_text(&row, col);
    let port: u32 = row.try_get("Master_Port").unwrap_or_default();
    Ok(Some(SlaveStatus {
        master: format!("{}:{port}", text("Master_Host")),
        io_running: text("Slave_IO_Running") == "Yes",
        sql_running: text("Slave_SQL_Running") == "Yes",
        io_pos: text("Gtid_IO_Pos"),
        error: [text("Last_IO_Error"), text("Last_SQL_Error")]
            .into_iter()
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }))
}

/// Runs one administrative statement, bounded by [`STATEMENT_TIMEOUT`].
async fn exec(node: &Node, conn: &mut MySqlConnection, sql: &str) -> Result<(), DbError> {
    timed(node, sql, sqlx::raw_sql(sql).execute(conn))
        .await
        .map(|_| ())
}

/// Bounds one statement by [`STATEMENT_TIMEOUT`] and names the server in its error.
async fn timed<T>(
    node: &Node,
    doing: &str,
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(node.error(
            format!("`{}` failed ({e})", redact(doing)),
            "check the administrator account's privileges and the server's error log",
        )),
        Err(_) => Err(node.error(
            format!("`{}` took longer than {STATEMENT_TIMEOUT:?}", redact(doing)),
            "check the server's load and error log",
        )),
    }
}

/// A statement as it may appear in an error: without the replication password.
fn redact(sql: &str) -> String {
    match sql.find("MASTER_PASSWORD=") {
        Some(at) => {
            let rest = &sql[at..];
            let end = rest.find(", ").map_or(sql.len(), |e| at + e);
            format!("{}MASTER_PASSWORD=...{}", &sql[..at], &sql[end..])
        }
        None => sql.to_owned(),
    }
}

/// Quotes a string for a MariaDB string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_password_never_appears_in_errors() {
        let sql =
            "CHANGE MASTER TO MASTER_HOST='h', MASTER_PASSWORD='s3cret', MASTER_USE_GTID=slave_pos";
        let shown = redact(sql);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("MASTER_USE_GTID"), "{shown}");
    }
}
