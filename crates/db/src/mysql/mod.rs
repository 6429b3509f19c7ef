//! The replicated MySQL/MariaDB engine: one pool per server, which of them is the
//! primary now, and the routing between them.
//!
//! - Writes go to the primary. After each write the same connection reads back the GTID
//!   the write got, which becomes the write's [`Position`]. A write first checks, on its
//!   own connection, that the server is writable (`@@read_only` is 0): a demoted or fenced
//!   server never takes a write.
//! - Reads go to the next usable replica (round robin). A replica is usable while the
//!   monitor (a background task, every [`MONITOR_INTERVAL`]) finds it answering,
//!   replicating, no more than `max_replica_lag` behind, and with the schema (it has
//!   applied the primary's position right after the migrations). With no usable replica, reads
//!   go to the primary.
//! - Read-your-writes: a read that carries a position first asks the replica to wait for
//!   it (`MASTER_GTID_WAIT` on MariaDB, `WAIT_FOR_EXECUTED_GTID_SET` on MySQL) for at most
//!   `read_your_writes_timeout`; when it does not catch up in time the read goes to the
//!   primary and the replica's fallback counter goes up.
//! - The primary down: writes fail fast with [`DbError::Unavailable`] (the application
//!   answers 503), and reads use any replica that answers, however far behind, because
//!   there is nothing fresher. The pools reconnect on their own when a server returns.
//! - Which server is the primary is state, not configuration: the pools are kept per
//!   server, and the monitor moves the primary role to the one writable server that
//!   replicates from nobody when the current primary is down or read-only (after a
//!   failover or switchover, `failover.rs`); a caller that knows may move it at once
//!   ([`crate::Db::use_primary`]).
//!
//! MariaDB and MySQL differ in the SQL for GTIDs and replica status; [`Flavor`] holds those
//! differences, and every place that depends on it says so.
//!
//! Layout: this file holds the servers, their pools and the engine; `routing.rs` where
//! each read and write goes; `monitor.rs` the background checks that decide which servers
//! are usable and which is the primary; `failover.rs` promotion, switchover, fencing and
//! rejoin, run by whoever decides (not by the application).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::watch;

use crate::queries::{Engine, ReadQuery, WriteQuery};
use crate::{DbError, MysqlConfig, Position, PositionRepr, Server, ServerStats, Written};

/// The schema in MariaDB's dialect, embedded at compile time; run on the primary only (the
/// replicas receive it through replication).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

pub mod failover;
mod gtid;
mod monitor;
mod routing;

use monitor::{check_all, monitor, replica_status};

/// How often the monitor checks every server. Short, so that a replica that falls behind
/// or a primary that returns is noticed within a fraction of a second.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);

/// How long one health query may take before the server counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a query waits for a pooled connection (which includes connecting). Past it the
/// server counts as unavailable, so a request answers 503 instead of hanging. Every pool
/// has it, because any server may become the primary; reads on a replica wait less
/// ([`REPLICA_ACQUIRE_TIMEOUT`]).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read waits for a replica's connection before it goes to the primary
/// instead: a replica that just died (or is saturated) should cost a read little.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long start-up waits for each replica to apply the migrations just run on the
/// primary (usually milliseconds). A replica that takes longer is skipped by reads until
/// the monitor sees that it has them ([`Member::has_schema`]).
const SCHEMA_WAIT: Duration = Duration::from_secs(2);

/// Pooled connections per MySQL/MariaDB server; the application server's requests share
/// them (the monitor has one of its own beside them).
pub const MAX_CONNECTIONS: u32 = 16;

/// Where MariaDB and MySQL speak differently about GTIDs and replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    MariaDb,
    MySql,
}

impl Flavor {
    /// After a commit, on the same connection: the GTID of this session's last write.
    /// MariaDB has exactly that in `@@last_gtid`. MySQL has no per-session variable without
    /// session-state tracking, so it reads `@@GLOBAL.gtid_executed`, a set that contains the
    /// write (and any that committed before it); waiting for it is correct, just sometimes
    /// a little longer than needed.
    fn last_gtid_sql(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT CAST(@@last_gtid AS CHAR)",
            Flavor::MySql => "SELECT CAST(@@GLOBAL.gtid_executed AS CHAR)",
        }
    }

    /// Waits on a replica until it has applied a GTID (set), with a timeout in seconds.
    /// MariaDB returns 0 when applied and -1 on timeout; MySQL returns 0 and 1.
    fn wait_sql(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT CAST(MASTER_GTID_WAIT(?, ?) AS SIGNED)",
            Flavor::MySql => "SELECT CAST(WAIT_FOR_EXECUTED_GTID_SET(?, ?) AS SIGNED)",
        }
    }

    /// Whether a replica applies `gtid` (a position or set) within `limit`, asked on
    /// `conn` with [`Flavor::wait_sql`]: `Ok(false)` when the time ran out.
    async fn applied_within<'c>(
        self,
        conn: impl sqlx::Executor<'c, Database = sqlx::MySql>,
        gtid: &str,
        limit: Duration,
    ) -> Result<bool, sqlx::Error> {
        let answer: i64 = sqlx::query_scalar(self.wait_sql())
            .bind(gtid)
            .bind(limit.as_secs_f64())
            .fetch_one(conn)
            .await?;
        Ok(answer == 0)
    }

    /// The primary's position: every GTID it has written. Read after the migrations, it is
    /// the point a replica must reach before it has the schema the queries need.
    fn position_sql(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT CAST(@@GLOBAL.gtid_binlog_pos AS CHAR)",
            Flavor::MySql => "SELECT CAST(@@GLOBAL.gtid_executed AS CHAR)",
        }
    }

    /// 1 when a replica has applied a position, else 0, without waiting. MariaDB has no
    /// set comparison, so it asks `MASTER_GTID_WAIT` with a timeout of 0 (0: applied).
    fn applied_sql(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT CAST(MASTER_GTID_WAIT(?, 0) = 0 AS SIGNED)",
            Flavor::MySql => "SELECT CAST(GTID_SUBSET(?, @@GLOBAL.gtid_executed) AS SIGNED)",
        }
    }

    /// MariaDB and MySQL before 8.0.22 say `SHOW SLAVE STATUS` with `Slave_*` and
    /// `Seconds_Behind_Master` columns; MySQL 8.0.22+ says `SHOW REPLICA STATUS` with
    /// `Replica_*` and `Seconds_Behind_Source`.
    fn replica_status(self) -> ReplicaStatusSql {
        match self {
            Flavor::MariaDb => ReplicaStatusSql {
                query: "SHOW SLAVE STATUS",
                io: "Slave_IO_Running",
                sql: "Slave_SQL_Running",
                behind: "Seconds_Behind_Master",
                io_error: "Last_IO_Error",
                sql_error: "Last_SQL_Error",
            },
            Flavor::MySql => ReplicaStatusSql {
                query: "SHOW REPLICA STATUS",
                io: "Replica_IO_Running",
                sql: "Replica_SQL_Running",
                behind: "Seconds_Behind_Source",
                io_error: "Last_IO_Error",
                sql_error: "Last_SQL_Error",
            },
        }
    }
}

/// The replica-status statement and the column names it answers with.
struct ReplicaStatusSql {
    query: &'static str,
    io: &'static str,
    sql: &'static str,
    behind: &'static str,
    io_error: &'static str,
    sql_error: &'static str,
}

/// One server with its pool, what the monitor last saw, and its counters. Whether it is
/// the primary is not here but in [`Shared::primary`], because that changes.
struct Member {
    name: String,
    address: String,
    pool: MySqlPool,
    /// The monitor's own connection, apart from the pool: a check must not wait behind
    /// requests for a pooled connection (a busy server would look dead), and reconnecting
    /// is one attempt, so a refused connection says "down" at once where the pool would
    /// retry until its timeout (and a failover would be learned a second late). Taken for
    /// a check and put back after it: only one round runs at a time.
    check: Mutex<Option<MySqlConnection>>,
    /// Set by the monitor (and by a failed query, which is quicker to notice).
    up: AtomicBool,
    /// It has applied the primary's position after the migrations ([`Shared::schema`]):
    /// until then its tables may be missing or old, so reads skip it. Set at once for
    /// the primary, by start-up's wait for the replicas that catch up within
    /// [`SCHEMA_WAIT`], and by the monitor for the later ones; never unset (a schema
    /// is never unapplied).
    has_schema: AtomicBool,
    /// `@@read_only` is 0 there, as the monitor or the last write's check saw it; for
    /// `/status` (the write path asks the server itself).
    writable: AtomicBool,
    health: Mutex<Health>,
    reads: AtomicU64,
    writes: AtomicU64,
    fallbacks: AtomicU64,
}

/// What the monitor knows about a server beyond up/down.
#[derive(Default)]
struct Health {
    /// How far behind the primary a replica is, or an upper bound of it.
    lag: Option<Duration>,
    /// When this replica's data was last known to be current: `now - lag` at the last
    /// check that measured a lag. While its SQL thread is stopped, its lag is counted from
    /// here, because `Seconds_Behind_Master` is then unknown (NULL).
    current_at: Option<Instant>,
    /// Why it is down or behind, for `/status`.
    problem: Option<String>,
}

impl Member {
    fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    fn mark_down(&self, problem: String) {
        if self.up.swap(false, Relaxed) {
            tracing::warn!(server = %self.name, address = %self.address, %problem, "database server down");
        }
        self.health.lock().expect("health lock").problem = Some(problem);
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(server = %self.name, address = %self.address, "database server up");
        }
    }

    fn lag(&self) -> Option<Duration> {
        self.health.lock().expect("health lock").lag
    }
}

/// The state the routing and the monitor share.
struct Shared {
    flavor: Flavor,
    /// Every server, the configured primary first, then the replicas in order.
    members: Vec<Member>,
    /// Index in `members` of the server that takes writes now.
    primary: AtomicUsize,
    /// Counts changes of primary, and tells writes waiting for a new primary (during a
    /// switchover) that there is one.
    generation: watch::Sender<u64>,
    /// Round-robin cursor over the replicas.
    next: AtomicUsize,
    /// The monitor has logged that two servers could be the primary, and will not again
    /// until that ends.
    split_seen: AtomicBool,
    /// The primary's position right after the migrations ran: a replica reached it once
    /// it has the schema (the replicas receive the migrations through replication, so a
    /// replica checked right after start-up may not have created the tables yet).
    schema: String,
    max_lag: Duration,
    wait_timeout: Duration,
}

pub(crate) struct Mysql {
    shared: Arc<Shared>,
    /// Stops the monitor: set by [`Mysql::close`], and dropped (which also stops it) with
    /// the engine, so the task never outlives the handle that owns it.
    stop: watch::Sender<bool>,
    /// The monitor task, awaited by `close` so no check runs after it returns.
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A text column of `SHOW SLAVE STATUS`, which MariaDB sends as bytes; empty when the
/// column is missing or NULL.
pub(crate) fn status_text(row: &sqlx::mysql::MySqlRow, column: &str) -> String {
    row.try_get::<Option<Vec<u8>>, _>(column)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn options(server: &Server) -> MySqlConnectOptions {
    MySqlConnectOptions::new()
        .host(&server.host)
        .port(server.port)
        .username(&server.user)
        .password(&server.password)
        .database(&server.database)
}

/// A pooled connection idle longer than this is pinged before it is handed out.
///
/// Idle connections to a server that restarted are dead, and the ping replaces them.
/// sqlx's default pings before *every* use, which costs a round trip per query: it
/// halved the timeline reads a replica served. A connection used within the last
/// second is alive as far as anything can tell (HikariCP skips its check the same way
/// for 500 ms), and the monitor, which checks each server every 250 ms, marks a
/// server that went away down before a request would pick it.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

fn pool_options() -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Turns a failure to reach `server` at start into a message that says what to do.
fn setup_error(server: &Server, err: &sqlx::Error) -> DbError {
    let (problem, fix) = match err {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("28000") || e.message().contains("Access denied") => (
            format!("refused user `{}` ({})", server.user, e.message()),
            format!(
                "check the password (the URL or the site file's password_env) and that the \
                 user exists there with GRANT ALL ON {}.* TO '{}'",
                server.database, server.user
            ),
        ),
        sqlx::Error::Database(e) if e.message().contains("Unknown database") => (
            format!("has no database `{}`", server.database),
            format!(
                "create it (CREATE DATABASE {}) on the primary, or fix the database name in the URL",
                server.database
            ),
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => (
            format!("does not answer within {ACQUIRE_TIMEOUT:?} ({err})"),
            "start it, or fix its host and port in the site file's [database] section".into(),
        ),
        _ => (
            err.to_string(),
            "check the server's error log and the site file's [database] section".into(),
        ),
    };
    DbError::Setup {
        server: server.name.clone(),
        address: server.address(),
        problem,
        fix,
    }
}

impl Mysql {
    /// Connects to every server, finds the primary (the configured one, unless a failover
    /// moved the role: see [`find_primary`]), applies the migrations there, checks each
    /// replica, and starts the monitor. A replica that is down at start is only a warning
    /// (it is skipped until it answers); one that refuses our user or is not a replica at
    /// all is a setup mistake, reported with what to do.
    pub(crate) async fn open(config: &MysqlConfig) -> Result<Mysql, DbError> {
        let servers: Vec<&Server> = std::iter::once(&config.primary)
            .chain(&config.replicas)
            .collect();
        let members: Vec<Member> = servers
            .iter()
            .map(|s| member(s, pool_options().connect_lazy_with(options(s))))
            .collect();
        // Every server at once; the configured primary may take as long as a query may
        // wait for it, a replica as long as a health check.
        let probes: Vec<Result<Probe, sqlx::Error>> =
            futures_util::future::join_all(members.iter().enumerate().map(|(i, m)| {
                let limit = if i == 0 {
                    ACQUIRE_TIMEOUT
                } else {
                    CHECK_TIMEOUT
                };
                probe(m, limit, i == 0)
            }))
            .await;
        let primary = find_primary(&servers, &probes)?;
        let Ok(Probe {
            version, flavor, ..
        }) = &probes[primary]
        else {
            unreachable!("the primary answered its probe");
        };
        let (version, flavor) = (version.clone(), *flavor);
        MIGRATOR
            .run(&members[primary].pool)
            .await
            .map_err(|e| DbError::Other {
                doing: "applying migrations on the primary",
                cause: format!("{}: {e}", servers[primary].address()),
            })?;
        members[primary].has_schema.store(true, Relaxed);
        let schema: String = sqlx::query_scalar(flavor.position_sql())
            .fetch_one(&members[primary].pool)
            .await
            .map_err(|e| DbError::Other {
                doing: "reading the primary's position after the migrations",
                cause: format!("{}: {e}", servers[primary].address()),
            })?;

        for (i, (server, probe)) in servers.iter().zip(&probes).enumerate() {
            if i == primary {
                continue;
            }
            match probe {
                Ok(Probe {
                    role: Role {
                        replicating: true, ..
                    },
                    ..
                }) => {}
                Ok(Probe { .. }) => {
                    return Err(DbError::Setup {
                        server: server.name.clone(),
                        address: server.address(),
                        problem: "is not a replica: it has no replication configured".into(),
                        fix: format!(
                            "make it replicate from the primary {} (CHANGE MASTER TO \
                             MASTER_HOST=..., MASTER_USE_GTID=slave_pos; START SLAVE), \
                             or remove it from `replicas`",
                            servers[primary].address()
                        ),
                    })
                }
                Err(e @ sqlx::Error::Database(_)) => return Err(setup_error(server, e)),
                Err(e) => {
                    tracing::warn!(server = %server.name, address = %server.address(), error = %e,
                        "replica does not answer; reads skip it until it does");
                    members[i].mark_down(e.to_string());
                }
            }
        }

        schema_applied(flavor, &members, primary, &schema).await;

        let shared = Arc::new(Shared {
            flavor,
            members,
            primary: AtomicUsize::new(primary),
            generation: watch::Sender::new(0),
            next: AtomicUsize::new(0),
            split_seen: AtomicBool::new(false),
            schema,
            max_lag: config.max_replica_lag,
            wait_timeout: config.read_your_writes_timeout,
        });
        // The first round runs before `open` returns, so routing starts with real lags.
        check_all(&shared).await;
        let (stop, stopped) = watch::channel(false);
        let monitor = tokio::spawn(monitor(shared.clone(), stopped));
        tracing::info!(
            primary = %servers[primary].address(),
            replicas = config.replicas.len(),
            %version,
            "mysql database ready"
        );
        Ok(Mysql {
            shared,
            stop,
            monitor: Mutex::new(Some(monitor)),
        })
    }

    /// Makes `name` the primary at once, for a caller that has just promoted it (the
    /// monitor would find it within [`MONITOR_INTERVAL`]). Refused unless the server
    /// answers, is writable and replicates from nobody, so a mistaken call cannot send
    /// writes to a replica or to a fenced server.
    pub(crate) async fn use_primary(&self, name: &str) -> Result<(), DbError> {
        let s = &self.shared;
        let Some(index) = s.members.iter().position(|m| m.name == name) else {
            return Err(DbError::Setup {
                server: name.to_owned(),
                address: String::new(),
                problem: "is not one of the configured database servers".into(),
                fix: format!(
                    "name one of: {}",
                    s.members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let member = &s.members[index];
        let problem = match probe(member, CHECK_TIMEOUT, false).await.map(|p| p.role) {
            Ok(Role {
                writable: true,
                replicating: false,
            }) => None,
            Ok(Role {
                writable: false, ..
            }) => Some("is read-only".to_owned()),
            Ok(Role { .. }) => Some("replicates from another server".to_owned()),
            Err(sqlx::Error::PoolTimedOut) => {
                Some(format!("does not answer within {CHECK_TIMEOUT:?}"))
            }
            Err(e) => Some(format!("does not answer ({e})")),
        };
        if let Some(problem) = problem {
            return Err(DbError::Setup {
                server: member.name.clone(),
                address: member.address.clone(),
                problem: format!("cannot take writes: it {problem}"),
                fix: "promote it first (db::mysql::failover), then name it again".into(),
            });
        }
        member.writable.store(true, Relaxed);
        member.mark_up();
        s.set_primary(index);
        Ok(())
    }

    /// The name of the server that takes writes now.
    pub(crate) fn primary_name(&self) -> String {
        self.shared.primary().name.clone()
    }

    /// How many times the primary role moved.
    pub(crate) fn primary_changes(&self) -> u64 {
        *self.shared.generation.borrow()
    }
}

/// Which configured server is the primary at start: the configured primary when it is
/// writable and replicates from nobody; else (a failover moved the role and the site file
/// still names the old one) the one other server that is. With none, or more than one
/// (two writable servers: one of them must be fenced first), the configured primary's
/// problem is reported and nothing is written anywhere.
fn find_primary(
    servers: &[&Server],
    probes: &[Result<Probe, sqlx::Error>],
) -> Result<usize, DbError> {
    let is_primary = |p: &Result<Probe, sqlx::Error>| {
        matches!(
            p,
            Ok(Probe {
                role: Role {
                    writable: true,
                    replicating: false
                },
                ..
            })
        )
    };
    let configured = servers[0];
    let writable: Vec<usize> = (1..probes.len())
        .filter(|&i| is_primary(&probes[i]))
        .collect();
    if is_primary(&probes[0]) {
        // Another server that is a primary too: an old primary back on its own, or the
        // site file names the old one after a failover. Decided before the migrations
        // run, so neither is written to. (The same server listed twice is reported by
        // the replica checks in `open` as "not a replica".)
        let others: Vec<usize> = writable
            .iter()
            .copied()
            .filter(|&i| servers[i].address() != configured.address())
            .collect();
        if !others.is_empty() {
            return Err(two_primaries(servers, &[&[0], &others[..]].concat()));
        }
        return Ok(0);
    }
    match writable.as_slice() {
        [moved] => {
            tracing::warn!(configured = %configured.name, primary = %servers[*moved].name,
                "the configured primary is not the primary now (after a failover); \
                 writes go to the server that is; update the site file");
            Ok(*moved)
        }
        [] => Err(match &probes[0] {
            Err(e) => setup_error(configured, e),
            Ok(Probe {
                role: Role {
                    writable: false, ..
                },
                ..
            }) => DbError::Setup {
                server: configured.name.clone(),
                address: configured.address(),
                problem: "is read-only, and no other server is a writable primary".into(),
                fix: "make it writable (SET GLOBAL read_only=0) if it is the primary, or \
                      promote a replica (db::failover)"
                    .into(),
            },
            Ok(Probe { .. }) => DbError::Setup {
                server: configured.name.clone(),
                address: configured.address(),
                problem: "replicates from another server, and no server is a writable primary"
                    .into(),
                fix: "promote a replica, or name the real primary in the site file".into(),
            },
        }),
        _ => Err(two_primaries(servers, &writable)),
    }
}

/// Waits (at most [`SCHEMA_WAIT`], all at once) for every replica that is up to apply
/// `schema`, the primary's position after the migrations, and marks those that did. The
/// monitor asks the others every round; reads skip them until they have it.
async fn schema_applied(flavor: Flavor, members: &[Member], primary: usize, schema: &str) {
    let waits = members
        .iter()
        .enumerate()
        .filter(|(i, m)| *i != primary && m.is_up());
    futures_util::future::join_all(waits.map(|(_, m)| async move {
        match flavor.applied_within(&m.pool, schema, SCHEMA_WAIT).await {
            Ok(true) => m.has_schema.store(true, Relaxed),
            Ok(false) => tracing::warn!(server = %m.name, address = %m.address,
                "replica has not applied the migrations within {SCHEMA_WAIT:?}; reads skip \
                 it until it has"),
            Err(e) => tracing::warn!(server = %m.name, address = %m.address, error = %e,
                "could not ask the replica whether it has the migrations; reads skip it \
                 until the monitor can"),
        }
    }))
    .await;
}

fn two_primaries(servers: &[&Server], writable: &[usize]) -> DbError {
    let names: Vec<String> = writable
        .iter()
        .map(|&i| format!("{} ({})", servers[i].name, servers[i].address()))
        .collect();
    DbError::Setup {
        server: servers[writable[0]].name.clone(),
        address: servers[writable[0]].address(),
        problem: format!(
            "more than one server is writable and replicates from nobody: {}",
            names.join(", ")
        ),
        fix: "fence all but the real primary (SET GLOBAL read_only=1) and let it rejoin \
              (db::mysql::failover::rejoin); writing to two primaries would split the data"
            .into(),
    }
}

/// Whether a server takes writes and whether it replicates, as one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Role {
    writable: bool,
    replicating: bool,
}

/// What a server said at start: its version (hence its [`Flavor`]) and its [`Role`].
struct Probe {
    version: String,
    flavor: Flavor,
    role: Role,
}

/// Asks one server, within `limit`, what it is. For the configured primary
/// (`may_lack_status`), a refused replica status (a user without `REPLICATION CLIENT`,
/// enough for a site with no replicas) counts as "replicates from nobody".
async fn probe(
    member: &Member,
    limit: Duration,
    may_lack_status: bool,
) -> Result<Probe, sqlx::Error> {
    let answer = tokio::time::timeout(limit, async {
        let mut conn = member.pool.acquire().await?;
        let (version, read_only): (String, i64) =
            sqlx::query_as("SELECT VERSION(), CAST(@@GLOBAL.read_only AS SIGNED)")
                .fetch_one(&mut *conn)
                .await?;
        let flavor = if version.contains("MariaDB") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        let replicating = match replica_status(flavor, &mut conn).await {
            Ok(status) => status.is_some(),
            Err(sqlx::Error::Database(_)) if may_lack_status => false,
            Err(e) => return Err(e),
        };
        Ok(Probe {
            version,
            flavor,
            role: Role {
                writable: read_only == 0,
                replicating,
            },
        })
    })
    .await;
    answer.unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

impl Engine for Mysql {
    type Conn = MySqlConnection;
    const NAME: &'static str = "mysql";

    async fn read<T: Send>(
        &self,
        after: Option<&Position>,
        doing: &'static str,
        query: impl ReadQuery<MySqlConnection, T>,
    ) -> Result<T, DbError> {
        self.shared.read(after, doing, &query).await
    }

    async fn write<T: Send>(
        &self,
        doing: &'static str,
        query: impl WriteQuery<MySqlConnection, T>,
    ) -> Result<Written<T>, DbError> {
        self.shared.write(doing, query).await
    }

    /// The primary when it is up, else any replica that answers: the application server
    /// is healthy while it can serve reads.
    async fn ping(&self) -> Result<(), DbError> {
        let s = &self.shared;
        let mut last = None;
        for m in s.by_role() {
            if !m.is_up() {
                continue;
            }
            match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&m.pool))
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some(format!("no answer within {CHECK_TIMEOUT:?}")),
            }
        }
        Err(DbError::Unavailable {
            doing: "checking the database",
            cause: last.unwrap_or_else(|| "neither the primary nor any replica answers".into()),
        })
    }

    /// Stops the monitor (and waits for its round in progress, each check being bounded
    /// by [`CHECK_TIMEOUT`]), then closes every pool.
    async fn close(&self) {
        self.stop.send_replace(true);
        let task = self.monitor.lock().expect("monitor lock").take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the database monitor ended badly");
            }
        }
        for member in &self.shared.members {
            let check = member.check.lock().expect("check lock").take();
            if let Some(conn) = check {
                let _ = conn.close().await;
            }
            member.pool.close().await;
        }
    }

    fn stats(&self) -> Vec<ServerStats> {
        let s = &self.shared;
        let primary = s.primary.load(Relaxed);
        s.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let is_primary = i == primary;
                let health = m.health.lock().expect("health lock");
                let healthy = m.is_up();
                ServerStats {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    role: if is_primary { "primary" } else { "replica" },
                    healthy,
                    usable: healthy
                        && (is_primary || (m.has_schema.load(Relaxed) && s.lag_ok(health.lag))),
                    writable: healthy && m.writable.load(Relaxed),
                    lag: if is_primary { None } else { health.lag },
                    reads: m.reads.load(Relaxed),
                    writes: m.writes.load(Relaxed),
                    fallbacks: m.fallbacks.load(Relaxed),
                    problem: health.problem.clone(),
                }
            })
            .collect()
    }
}

fn member(server: &Server, pool: MySqlPool) -> Member {
    Member {
        name: server.name.clone(),
        address: server.address(),
        pool,
        check: Mutex::new(None),
        up: AtomicBool::new(true),
        has_schema: AtomicBool::new(false),
        writable: AtomicBool::new(false),
        health: Mutex::new(Health::default()),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        fallbacks: AtomicU64::new(0),
    }
}

impl Shared {
    fn lag_ok(&self, lag: Option<Duration>) -> bool {
        lag.is_some_and(|lag| lag <= self.max_lag)
    }

    /// The server that takes writes now.
    fn primary(&self) -> &Member {
        &self.members[self.primary.load(Relaxed)]
    }

    /// The primary first, then the others: the order health checks try servers in.
    fn by_role(&self) -> impl Iterator<Item = &Member> {
        let primary = self.primary.load(Relaxed);
        std::iter::once(&self.members[primary]).chain(
            self.members
                .iter()
                .enumerate()
                .filter(move |(i, _)| *i != primary)
                .map(|(_, m)| m),
        )
    }

    /// Moves the primary role to `members[index]` and wakes writes waiting for one.
    fn set_primary(&self, index: usize) {
        let old = self.primary.swap(index, Relaxed);
        if old != index {
            self.generation.send_modify(|g| *g += 1);
            let generation = *self.generation.borrow();
            tracing::warn!(from = %self.members[old].name, to = %self.members[index].name,
                generation, "database primary changed; writes go to the new primary");
        }
    }
}

/// MySQL/MariaDB error numbers that mean "this server cannot serve us right now" rather
/// than "this query is wrong": too many connections (1040), out of resources (1041), server
/// shutting down (1053), lock wait timeout (1205), deadlock (1213), read-only (1290, 1836),
/// connection killed (1927), and the client's lost-connection errors (2002, 2003, 2006, 2013).
const UNAVAILABLE_CODES: [u16; 12] = [
    1040, 1041, 1053, 1205, 1213, 1290, 1836, 1927, 2002, 2003, 2006, 2013,
];

/// Whether the server refused a write because it is read-only (1290, 1836).
fn is_read_only(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|e| matches!(e.number(), 1290 | 1836)))
}

fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| UNAVAILABLE_CODES.contains(&e.number())),
        _ => false,
    }
}

/// Sorts an engine error into the [`DbError`] variant that tells the caller what to do.
fn classify(doing: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |err| {
        let cause = err.to_string();
        if is_unavailable(&err) {
            DbError::Unavailable { doing, cause }
        } else {
            DbError::Other { doing, cause }
        }
    }
}
