//! `db`: database access for the foobar application.
//!
//! The application talks to one [`Db`] handle and never sees which engine is behind it:
//! an embedded SQLite file ([`Config::Sqlite`]) or a MySQL/MariaDB primary with GTID
//! replicas ([`Config::Mysql`]), where this crate does the read/write split itself:
//!
//! - every write goes to the primary and returns a [`Written`] value carrying a
//!   [`Position`], an opaque token naming the point in the write history where the write
//!   landed (a GTID on MySQL/MariaDB);
//! - every read takes `after: Option<&Position>`, meaning "this reader has already seen a
//!   write at this position; do not answer from older data". The replicated backend sends
//!   the read to a healthy replica, which first waits (briefly) for that position, and goes
//!   to the primary when the replica does not catch up in time;
//! - [`Position`] round-trips through a short string so the application can keep it in a
//!   cookie, which keeps app servers stateless.
//!
//! Layout: this file holds the public types and [`Db`], which hands every call to its
//! engine; `queries.rs` holds every query, written once, and the `Engine`
//! trait each engine implements: `sqlite.rs`, and `mysql/` (pools, the replica monitor,
//! the read/write routing, failover); `error.rs` holds [`DbError`], whose variants tell callers
//! what they can do about a failure (pick another name, retry later, fix the setup, or
//! report a bug); `managed.rs` starts a local MariaDB primary and replicas for `scaleup up`
//! and the tests; `spent.rs` counts and times one request's calls (for `Server-Timing`).
//!
//! Timestamps are unix seconds (`i64`) everywhere, passed in by the caller so that tests and
//! every backend agree on what "now" is.
#![forbid(unsafe_code)]

mod error;
pub mod managed;
mod mysql;
mod queries;
pub mod spent;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::DbError;
/// Promotion, switchover, fencing and rejoin of MariaDB servers, for the decider.
pub use mysql::failover;
pub use mysql::MAX_CONNECTIONS;

/// Which database to use and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Config {
    /// An embedded SQLite file: the zero-setup default for local runs and tests.
    Sqlite {
        /// The database file; it and its parent directory are created when missing.
        path: PathBuf,
    },
    /// A MySQL/MariaDB primary and its replicas.
    Mysql(MysqlConfig),
}

/// The replicated database tier: where each server is and how reads are routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlConfig {
    /// Takes every write, runs the migrations, and answers reads no replica can.
    pub primary: Server,
    /// Serve reads; each must replicate from the primary with GTIDs.
    pub replicas: Vec<Server>,
    /// A replica further behind than this is skipped for reads until it catches up.
    pub max_replica_lag: Duration,
    /// How long a read on a replica waits for the reader's own last write before it is
    /// sent to the primary instead.
    pub read_your_writes_timeout: Duration,
}

/// How to reach one MySQL/MariaDB server.
#[derive(Clone, PartialEq, Eq)]
pub struct Server {
    /// `primary`, `replica1`, ...: how messages, `/status` and metrics name it.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl Server {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Hand-written so that logging a configuration never prints the password.
impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("address", &self.address())
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// One database server as `/status` and `/metrics` show it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerStats {
    /// `primary`, `replica1`, ...
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// `"primary"` or `"replica"`.
    pub role: &'static str,
    /// Answers queries (and, for a replica, is configured to replicate).
    pub healthy: bool,
    /// Reads may be sent here now: healthy and, for a replica, not too far behind.
    pub usable: bool,
    /// It takes writes (`read_only` is off), as last seen: true of the primary unless it
    /// was demoted or fenced; true of another server only when something is wrong (an
    /// old primary back on its own).
    pub writable: bool,
    /// How far behind the primary a replica is (an upper bound while its SQL thread is
    /// stopped); `None` for the primary or when unknown.
    pub lag: Option<Duration>,
    /// Reads this server answered.
    pub reads: u64,
    /// Writes this server took (only the primary takes writes).
    pub writes: u64,
    /// Reads that came here with a reader's own write this replica had not applied in
    /// time, and went to the primary instead.
    pub fallbacks: u64,
    /// Why it is not healthy or usable, in words for an operator.
    pub problem: Option<String>,
}

/// A handle to the database. Cloning is cheap and shares the connection pool, so every
/// request handler can hold its own copy.
#[derive(Clone)]
pub struct Db {
    /// The engine with its pools; shared so clones reuse one pool instead of opening
    /// connections of their own. Every query is written once, in `queries.rs`, for
    /// whichever engine this is.
    store: Arc<dyn queries::Store>,
    /// The same engine when it is MySQL/MariaDB, for what only a replicated database has
    /// (which server is the primary).
    mysql: Option<Arc<mysql::Mysql>>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("engine", &self.store.engine())
            .finish()
    }
}

/// Where in the database's write history a write landed.
///
/// Opaque on purpose: callers only store it (see [`Position::encode`]) and hand it back to a
/// read as `after`. On SQLite there is a single copy of the data, so every read already sees
/// every committed write and the position carries nothing; a replicated backend will carry a
/// GTID here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position(PositionRepr);

/// The backend-specific content of a [`Position`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum PositionRepr {
    /// SQLite: one copy of the data, nothing to wait for.
    Sqlite,
    /// MySQL/MariaDB: a GTID (MariaDB `0-1-42`) or GTID set (MySQL `uuid:1-42,...`) that a
    /// replica must have applied before it may answer.
    Gtid(String),
    /// MySQL/MariaDB, when the write's GTID could not be read back: only the primary is
    /// sure to have the write.
    Primary,
}

/// The text form of [`PositionRepr::Sqlite`].
const SQLITE_POSITION: &str = "sqlite";
/// The text form of [`PositionRepr::Primary`].
const PRIMARY_POSITION: &str = "primary";
/// Prefix of the text form of [`PositionRepr::Gtid`].
const GTID_PREFIX: &str = "g";

impl Position {
    /// A short, cookie-safe string form (no spaces, commas, semicolons or quotes): GTID sets
    /// separate their members with commas, which become `~` here.
    pub fn encode(&self) -> String {
        match &self.0 {
            PositionRepr::Sqlite => SQLITE_POSITION.to_owned(),
            PositionRepr::Primary => PRIMARY_POSITION.to_owned(),
            PositionRepr::Gtid(gtid) => format!("{GTID_PREFIX}{}", gtid.replace(',', "~")),
        }
    }

    /// Parses what [`Position::encode`] produced. Returns `None` for anything else (a stale or
    /// tampered cookie), which callers treat as "no position known".
    pub fn decode(text: &str) -> Option<Position> {
        match text {
            SQLITE_POSITION => Some(Position(PositionRepr::Sqlite)),
            PRIMARY_POSITION => Some(Position(PositionRepr::Primary)),
            _ => {
                let gtid = text.strip_prefix(GTID_PREFIX)?;
                let valid = !gtid.is_empty()
                    && gtid.len() <= 1024
                    && gtid
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, '-' | ':' | '~'));
                valid.then(|| Position(PositionRepr::Gtid(gtid.replace('~', ","))))
            }
        }
    }
}

/// The result of a write, together with where it landed so later reads can wait for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written<T> {
    /// What the write produced (the new row, or `()`).
    pub value: T,
    /// Hand this to later reads as `after` to read your own writes.
    pub position: Position,
}

/// A registered account. Read from a row of either engine by its column names.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    /// Unique; the application lowercases and validates it before it gets here.
    pub username: String,
    /// A PHC-format password hash; the database never sees the password itself.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Hand-written so that logging a user never prints the password hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A post, joined with its author's name because every place that shows a post shows who
/// wrote it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Post {
    /// Increases with time, so it doubles as the pagination cursor (`before_id`).
    pub id: i64,
    pub user_id: i64,
    /// The author's username (the joined `username` column).
    #[sqlx(rename = "username")]
    pub author: String,
    pub body: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Row counts for status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub posts: i64,
}

impl Db {
    /// Opens (creating when missing) the database and brings its schema up to date.
    /// Safe to call on every start: migrations already applied are skipped.
    pub async fn open(config: &Config) -> Result<Db, DbError> {
        Ok(match config {
            Config::Sqlite { path } => Db {
                store: Arc::new(sqlite::Sqlite::open(path).await?),
                mysql: None,
            },
            Config::Mysql(config) => {
                let mysql = Arc::new(mysql::Mysql::open(config).await?);
                Db {
                    store: mysql.clone(),
                    mysql: Some(mysql),
                }
            }
        })
    }

    /// The name of the server that takes writes now (`primary`, `replica1`, ...): the
    /// configured primary until a failover moves the role. `None` for SQLite.
    pub fn primary(&self) -> Option<String> {
        self.mysql.as_ref().map(|m| m.primary_name())
    }

    /// How many times the primary role moved since [`Db::open`] (a promotion or switchover
    /// this handle followed), for `/metrics`. Always 0 for SQLite.
    pub fn primary_changes(&self) -> u64 {
        self.mysql.as_ref().map_or(0, |m| m.primary_changes())
    }

    /// Sends writes to `server` from now on, for the caller that has just promoted it
    /// ([`failover`]); without this call the monitor finds the new primary within a
    /// quarter of a second. Refused (and nothing changes) unless `server` is one of the
    /// configured servers, answers, is writable and replicates from nobody.
    pub async fn use_primary(&self, server: &str) -> Result<(), DbError> {
        match &self.mysql {
            Some(mysql) => mysql.use_primary(server).await,
            None => Err(DbError::Setup {
                server: server.to_owned(),
                address: String::new(),
                problem: "an embedded SQLite database has no servers to choose from".into(),
                fix: "use `kind = \"mysql\"` for a primary with replicas".into(),
            }),
        }
    }

    /// Closes the connections, waiting for queries in flight, and stops the replica
    /// monitor; later calls fail with [`DbError::Unavailable`]. Call it at shutdown so
    /// SQLite checkpoints its write-ahead log and the file is complete on its own.
    pub async fn close(&self) {
        self.store.close().await
    }

    /// Per-server health and traffic of a replicated database, for `/status` and
    /// `/metrics`. Empty for SQLite, which is no server but a file inside this process.
    pub fn stats(&self) -> Vec<ServerStats> {
        self.store.stats()
    }

    /// Checks the database answers a trivial query; used by health checks.
    pub async fn ping(&self) -> Result<(), DbError> {
        spent::timed(self.store.ping()).await
    }

    /// Registers a user. Fails with [`DbError::Conflict`] when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Written<User>, DbError> {
        spent::timed(self.store.create_user(username, password_hash, now)).await
    }

    /// Looks a user up by exact username.
    pub async fn user_by_name(
        &self,
        username: &str,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        spent::timed(self.store.user_by_name(username, after)).await
    }

    /// Looks a user up by id.
    pub async fn user_by_id(
        &self,
        id: i64,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        spent::timed(self.store.user_by_id(id, after)).await
    }

    /// Stores a login session under the hash of its token. Also removes sessions that have
    /// expired, so the table does not grow without bound.
    pub async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<Written<()>, DbError> {
        spent::timed(
            self.store
                .create_session(token_hash, user_id, now, expires_at),
        )
        .await
    }

    /// The user a session token hash belongs to, if the session exists and has not expired
    /// at `now`.
    pub async fn session_user(
        &self,
        token_hash: &[u8],
        now: i64,
        after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        spent::timed(self.store.session_user(token_hash, now, after)).await
    }

    /// Ends a session. Deleting a session that does not exist is not an error: logging out
    /// twice should simply succeed.
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<Written<()>, DbError> {
        spent::timed(self.store.delete_session(token_hash)).await
    }

    /// Publishes a post and returns it with its author's name.
    pub async fn create_post(
        &self,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Written<Post>, DbError> {
        spent::timed(self.store.create_post(user_id, body, now)).await
    }

    /// Everyone's posts, newest first: at most `limit` posts with an id below `before_id`
    /// (all posts when `None`).
    pub async fn timeline(
        &self,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        spent::timed(self.store.timeline(before_id, limit, after)).await
    }

    /// One user's posts, newest first, paged like [`Db::timeline`].
    pub async fn user_posts(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        spent::timed(self.store.user_posts(user_id, before_id, limit, after)).await
    }

    /// How many users and posts exist, for status pages.
    pub async fn counts(&self, after: Option<&Position>) -> Result<Counts, DbError> {
        spent::timed(self.store.counts(after)).await
    }
}

/// Whether `err` is a unique-key violation (a username taken), on either engine.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_cookie_safe_text() {
        for gtid in [
            "0-1-42",
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,4f22fa47-71ca-11e1-9e33-c80aa9429562:1-9",
        ] {
            let position = Position(PositionRepr::Gtid(gtid.into()));
            let text = position.encode();
            assert!(!text.contains([',', ';', ' ', '"']), "{text}");
            assert_eq!(Position::decode(&text), Some(position));
        }
        for kept in [PositionRepr::Sqlite, PositionRepr::Primary] {
            let position = Position(kept);
            assert_eq!(Position::decode(&position.encode()), Some(position));
        }
        for tampered in ["", "g", "g0-1-42;x", "gzz", "sqlite2"] {
            assert_eq!(Position::decode(tampered), None, "{tampered}");
        }
    }
}
