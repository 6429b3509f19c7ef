//! The replicated MySQL/MariaDB backend: one pool for the primary, one per replica, and
//! the routing between them.
//!
//! - Writes go to the primary. After each write the same connection reads back the GTID
//!   the write got, which becomes the write's [`Position`].
//! - Reads go to the next usable replica (round robin). A replica is usable while the
//!   monitor (a background task, every [`MONITOR_INTERVAL`]) finds it answering,
//!   replicating, and no more than `max_replica_lag` behind. With no usable replica, reads
//!   go to the primary.
//! - Read-your-writes: a read that carries a position first asks the replica to wait for
//!   it (`MASTER_GTID_WAIT` on MariaDB, `WAIT_FOR_EXECUTED_GTID_SET` on MySQL) for at most
//!   `read_your_writes_timeout`; when it does not catch up in time the read goes to the
//!   primary and the replica's fallback counter goes up.
//! - The primary down: writes fail fast with [`DbError::Unavailable`] (the application
//!   answers 503), and reads use any replica that answers, however far behind, because
//!   there is nothing fresher. The pools reconnect on their own when a server returns.
//!
//! MariaDB and MySQL differ in the SQL for GTIDs and replica status; [`Flavor`] holds those
//! differences, and every place that depends on it says so.
//!
//! Layout: this file holds the pools and the routing; `monitor.rs` the background checks
//! that decide which servers are usable; `sql.rs` the statements whose shape matters to
//! the optimizer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::FromRow;
use sqlx::{Connection, Row};

use crate::{
    Counts, DbError, MysqlConfig, Position, PositionRepr, Post, Server, ServerStats, User, Written,
};

/// The schema in MariaDB's dialect, embedded at compile time; run on the primary only (the
/// replicas receive it through replication).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

mod monitor;
mod sql;

use monitor::{check_all, monitor, replica_status};
use sql::{newest_first, page_of_posts, POST_COLUMNS, USER_COLUMNS};

/// How often the monitor checks every server. Short, so that a replica that falls behind
/// or a primary that returns is noticed within a fraction of a second.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);

/// How long one health query may take before the server counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a query waits for a pooled connection (which includes connecting). Past it the
/// server counts as unavailable, so a request answers 503 instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read waits for a replica's connection before it goes to the primary
/// instead: a replica that just died (or is saturated) should cost a read little.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// Connections per server; the application server's requests share them.
const MAX_CONNECTIONS: u32 = 16;

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

/// One server with its pool, what the monitor last saw, and its counters.
struct Member {
    name: String,
    address: String,
    is_primary: bool,
    pool: MySqlPool,
    /// Set by the monitor (and by a failed query, which is quicker to notice).
    up: AtomicBool,
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
    primary: Member,
    replicas: Vec<Member>,
    /// Round-robin cursor over the replicas.
    next: AtomicUsize,
    max_lag: Duration,
    wait_timeout: Duration,
}

pub(crate) struct Mysql {
    shared: Arc<Shared>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for Mysql {
    fn drop(&mut self) {
        self.monitor.abort();
    }
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
    /// Connects to the primary (which must answer: the migrations run there), applies the
    /// migrations, checks each replica, and starts the monitor. A replica that is down at
    /// start is only a warning (it is skipped until it answers); one that refuses our user
    /// or is not a replica at all is a setup mistake, reported with what to do.
    pub(crate) async fn open(config: &MysqlConfig) -> Result<Mysql, DbError> {
        let primary_pool = pool_options()
            .connect_with(options(&config.primary))
            .await
            .map_err(|e| setup_error(&config.primary, &e))?;
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&primary_pool)
            .await
            .map_err(|e| setup_error(&config.primary, &e))?;
        let flavor = if version.contains("MariaDB") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        MIGRATOR
            .run(&primary_pool)
            .await
            .map_err(|e| DbError::Other {
                doing: "applying migrations on the primary",
                cause: format!("{}: {e}", config.primary.address()),
            })?;

        let mut replicas = Vec::with_capacity(config.replicas.len());
        for server in &config.replicas {
            let pool = pool_options()
                .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
                .connect_lazy_with(options(server));
            let member = member(server, false, pool);
            match tokio::time::timeout(CHECK_TIMEOUT, member.pool.acquire()).await {
                Ok(Ok(mut conn)) => match replica_status(flavor, &mut conn).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(DbError::Setup {
                            server: server.name.clone(),
                            address: server.address(),
                            problem: "is not a replica: it has no replication configured".into(),
                            fix: format!(
                                "make it replicate from the primary {} (CHANGE MASTER TO \
                                 MASTER_HOST=..., MASTER_USE_GTID=slave_pos; START SLAVE), \
                                 or remove it from `replicas`",
                                config.primary.address()
                            ),
                        })
                    }
                    Err(e) => return Err(setup_error(server, &e)),
                },
                Ok(Err(e @ sqlx::Error::Database(_))) => return Err(setup_error(server, &e)),
                Ok(Err(e)) => {
                    tracing::warn!(server = %server.name, address = %server.address(), error = %e,
                        "replica does not answer; reads skip it until it does");
                    member.mark_down(e.to_string());
                }
                Err(_) => {
                    tracing::warn!(server = %server.name, address = %server.address(),
                        "replica does not answer; reads skip it until it does");
                    member.mark_down(format!("no answer within {CHECK_TIMEOUT:?}"));
                }
            }
            replicas.push(member);
        }

        let shared = Arc::new(Shared {
            flavor,
            primary: member(&config.primary, true, primary_pool),
            replicas,
            next: AtomicUsize::new(0),
            max_lag: config.max_replica_lag,
            wait_timeout: config.read_your_writes_timeout,
        });
        // The first round runs before `open` returns, so routing starts with real lags.
        check_all(&shared).await;
        let monitor = tokio::spawn(monitor(shared.clone()));
        tracing::info!(
            primary = %config.primary.address(),
            replicas = config.replicas.len(),
            %version,
            "mysql database ready"
        );
        Ok(Mysql { shared, monitor })
    }

    pub(crate) async fn close(&self) {
        self.monitor.abort();
        self.shared.primary.pool.close().await;
        for replica in &self.shared.replicas {
            replica.pool.close().await;
        }
    }

    pub(crate) fn stats(&self) -> Vec<ServerStats> {
        let s = &self.shared;
        std::iter::once(&s.primary)
            .chain(&s.replicas)
            .map(|m| {
                let health = m.health.lock().expect("health lock");
                let healthy = m.is_up();
                ServerStats {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    role: if m.is_primary { "primary" } else { "replica" },
                    healthy,
                    usable: healthy && (m.is_primary || s.lag_ok(health.lag)),
                    lag: health.lag,
                    reads: m.reads.load(Relaxed),
                    writes: m.writes.load(Relaxed),
                    fallbacks: m.fallbacks.load(Relaxed),
                    problem: health.problem.clone(),
                }
            })
            .collect()
    }

    /// The primary when it is up, else any replica that answers: the application server
    /// is healthy while it can serve reads.
    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        let s = &self.shared;
        let mut last = None;
        for m in std::iter::once(&s.primary).chain(&s.replicas) {
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

    pub(crate) async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Written<User>, DbError> {
        let (username, password_hash) = (username.to_owned(), password_hash.to_owned());
        self.shared
            .write("creating a user", move |c| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)",
                    )
                    .bind(&username)
                    .bind(&password_hash)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    Ok(User {
                        id: done.last_insert_id() as i64,
                        username,
                        password_hash,
                        created_at: now,
                    })
                })
            })
            .await
    }

    pub(crate) async fn user_by_name(
        &self,
        username: &str,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        let username = username.to_owned();
        self.shared
            .read(after, "looking up a user by name", move |c| {
                let username = username.clone();
                Box::pin(async move {
                    let row = sqlx::query(&format!("{USER_COLUMNS} WHERE username = ?"))
                        .bind(username)
                        .fetch_optional(c)
                        .await?;
                    row.as_ref().map(User::from_row).transpose()
                })
            })
            .await
    }

    pub(crate) async fn user_by_id(
        &self,
        id: i64,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        self.shared
            .read(after, "looking up a user by id", move |c| {
                Box::pin(async move {
                    let row = sqlx::query(&format!("{USER_COLUMNS} WHERE id = ?"))
                        .bind(id)
                        .fetch_optional(c)
                        .await?;
                    row.as_ref().map(User::from_row).transpose()
                })
            })
            .await
    }

    pub(crate) async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<Written<()>, DbError> {
        let token_hash = token_hash.to_owned();
        self.shared
            .write("creating a session", move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(&token_hash)
                    .bind(user_id)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                })
            })
            .await
    }

    pub(crate) async fn session_user(
        &self,
        token_hash: &[u8],
        now: i64,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        let token_hash = token_hash.to_owned();
        self.shared
            .read(after, "looking up a session", move |c| {
                let token_hash = token_hash.clone();
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT u.id, u.username, u.password_hash, u.created_at \
                         FROM sessions s JOIN users u ON u.id = s.user_id \
                         WHERE s.token_hash = ? AND s.expires_at > ?",
                    )
                    .bind(token_hash)
                    .bind(now)
                    .fetch_optional(c)
                    .await?;
                    row.as_ref().map(User::from_row).transpose()
                })
            })
            .await
    }

    pub(crate) async fn delete_session(&self, token_hash: &[u8]) -> Result<Written<()>, DbError> {
        let token_hash = token_hash.to_owned();
        self.shared
            .write("deleting a session", move |c| {
                Box::pin(async move {
                    sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
                        .bind(token_hash)
                        .execute(c)
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    pub(crate) async fn create_post(
        &self,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Written<Post>, DbError> {
        let body = body.to_owned();
        self.shared
            .write("creating a post", move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let id = sqlx::query(
                        "INSERT INTO posts (user_id, body, created_at) VALUES (?, ?, ?)",
                    )
                    .bind(user_id)
                    .bind(&body)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .last_insert_id() as i64;
                    let row = sqlx::query(&format!("{POST_COLUMNS} WHERE p.id = ?"))
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let post = Post::from_row(&row)?;
                    tx.commit().await?;
                    Ok(post)
                })
            })
            .await
    }

    pub(crate) async fn timeline(
        &self,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        self.shared
            .read(after, "loading the timeline", move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(&page_of_posts("WHERE id < ?"))
                        // A plain range (no `? IS NULL OR`), so the primary key serves it.
                        .bind(before_id.unwrap_or(i64::MAX))
                        .bind(i64::from(limit))
                        .fetch_all(c)
                        .await?;
                    newest_first(&rows)
                })
            })
            .await
    }

    pub(crate) async fn user_posts(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        self.shared
            .read(after, "loading a user's posts", move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(&page_of_posts("WHERE user_id = ? AND id < ?"))
                        .bind(user_id)
                        .bind(before_id.unwrap_or(i64::MAX))
                        .bind(i64::from(limit))
                        .fetch_all(c)
                        .await?;
                    newest_first(&rows)
                })
            })
            .await
    }

    pub(crate) async fn counts(&self, after: Option<&Position>) -> Result<Counts, DbError> {
        self.shared
            .read(after, "counting rows", move |c| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM posts)",
                    )
                    .fetch_one(c)
                    .await?;
                    Ok(Counts {
                        users: row.try_get(0)?,
                        posts: row.try_get(1)?,
                    })
                })
            })
            .await
    }
}

fn member(server: &Server, is_primary: bool, pool: MySqlPool) -> Member {
    Member {
        name: server.name.clone(),
        address: server.address(),
        is_primary,
        pool,
        up: AtomicBool::new(true),
        health: Mutex::new(Health::default()),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        fallbacks: AtomicU64::new(0),
    }
}

/// A query run on one connection; called again on another server when the first fails.
type Query<'q, T> = dyn for<'c> Fn(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
    + Send
    + Sync
    + 'q;

impl Shared {
    fn lag_ok(&self, lag: Option<Duration>) -> bool {
        lag.is_some_and(|lag| lag <= self.max_lag)
    }

    /// The next replica reads may use: up and not too far behind; or, while the primary is
    /// down, any replica that is up (stale data beats no data).
    fn pick_replica(&self, primary_up: bool) -> Option<&Member> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| r.is_up() && (!primary_up || self.lag_ok(r.lag())))
    }

    async fn read<T, F>(
        &self,
        after: Option<&Position>,
        doing: &'static str,
        query: F,
    ) -> Result<T, DbError>
    where
        F: for<'c> Fn(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + Sync,
    {
        let query: &Query<'_, T> = &query;
        let primary_up = self.primary.is_up();
        let wait_for = match after.map(|p| &p.0) {
            Some(PositionRepr::Gtid(gtid)) => Some(gtid.as_str()),
            // The write's GTID is unknown: only the primary surely has it.
            Some(PositionRepr::Primary) if primary_up => {
                return self.read_primary(doing, query).await
            }
            _ => None,
        };
        if let Some(replica) = self.pick_replica(primary_up) {
            match replica.pool.acquire().await {
                Ok(mut conn) => {
                    let caught_up = match wait_for {
                        None => true,
                        Some(gtid) => self.wait(&mut conn, gtid).await,
                    };
                    // With the primary down the replica is the freshest copy there is.
                    if caught_up || !primary_up {
                        match query(&mut conn).await {
                            Ok(value) => {
                                replica.reads.fetch_add(1, Relaxed);
                                return Ok(value);
                            }
                            Err(e) if is_unavailable(&e) => replica.mark_down(e.to_string()),
                            Err(e) => return Err(classify(doing)(e)),
                        }
                    } else {
                        replica.fallbacks.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => replica.mark_down(e.to_string()),
            }
        }
        self.read_primary(doing, query).await
    }

    async fn read_primary<T>(
        &self,
        doing: &'static str,
        query: &Query<'_, T>,
    ) -> Result<T, DbError> {
        let mut conn = self.primary_conn(doing).await?;
        let value = query(&mut conn)
            .await
            .map_err(|e| self.primary_failed(doing, e))?;
        self.primary.reads.fetch_add(1, Relaxed);
        Ok(value)
    }

    /// Asks a replica to wait until it has applied `gtid`, at most `wait_timeout`. False
    /// when it has not (or cannot say): the caller goes to the primary.
    async fn wait(&self, conn: &mut MySqlConnection, gtid: &str) -> bool {
        let answer: Result<i64, sqlx::Error> = sqlx::query_scalar(self.flavor.wait_sql())
            .bind(gtid)
            .bind(self.wait_timeout.as_secs_f64())
            .fetch_one(conn)
            .await;
        match answer {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, gtid, "waiting for a GTID on a replica failed");
                false
            }
        }
    }

    /// A connection to the primary, or at once [`DbError::Unavailable`] when the monitor
    /// has seen it down (so requests do not each wait for a connect timeout).
    async fn primary_conn(
        &self,
        doing: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, DbError> {
        if !self.primary.is_up() {
            let problem = self
                .primary
                .health
                .lock()
                .expect("health lock")
                .problem
                .clone();
            return Err(DbError::Unavailable {
                doing,
                cause: format!(
                    "the primary {} is down: {}",
                    self.primary.address,
                    problem.unwrap_or_default()
                ),
            });
        }
        self.primary
            .pool
            .acquire()
            .await
            .map_err(|e| self.primary_failed(doing, e))
    }

    fn primary_failed(&self, doing: &'static str, e: sqlx::Error) -> DbError {
        if is_unavailable(&e) {
            self.primary.mark_down(e.to_string());
        }
        let err = classify(doing)(e);
        match err {
            DbError::Unavailable { doing, cause } => DbError::Unavailable {
                doing,
                cause: format!("the primary {}: {cause}", self.primary.address),
            },
            other => other,
        }
    }

    async fn write<T, F>(&self, doing: &'static str, query: F) -> Result<Written<T>, DbError>
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut conn = self.primary_conn(doing).await?;
        let value = query(&mut conn).await.map_err(|e| {
            if crate::is_unique_violation(&e) {
                DbError::Conflict { what: "username" }
            } else {
                self.primary_failed(doing, e)
            }
        })?;
        self.primary.writes.fetch_add(1, Relaxed);
        // The write is committed; failing to learn its GTID must not turn it into an error.
        let gtid: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar(self.flavor.last_gtid_sql())
                .fetch_one(&mut *conn)
                .await;
        let position = match gtid {
            Ok(Some(gtid)) if !gtid.trim().is_empty() => {
                PositionRepr::Gtid(gtid.split_whitespace().collect::<String>())
            }
            other => {
                tracing::warn!(result = ?other.map_err(|e| e.to_string()),
                    "no GTID after a write (is log_bin on for the primary?); this visitor reads from the primary");
                PositionRepr::Primary
            }
        };
        Ok(Written {
            value,
            position: Position(position),
        })
    }
}

/// MySQL/MariaDB error numbers that mean "this server cannot serve us right now" rather
/// than "this query is wrong": too many connections (1040), out of resources (1041), server
/// shutting down (1053), lock wait timeout (1205), deadlock (1213), read-only (1290, 1836),
/// connection killed (1927), and the client's lost-connection errors (2002, 2003, 2006, 2013).
const UNAVAILABLE_CODES: [u16; 12] = [
    1040, 1041, 1053, 1205, 1213, 1290, 1836, 1927, 2002, 2003, 2006, 2013,
];

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
