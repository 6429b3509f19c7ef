//! The embedded SQLite engine: one file, one pool; the queries are in `queries.rs`.
//!
//! SQLite keeps a single copy of the data, so every read sees every committed write and the
//! `after` positions that reads receive need no waiting here.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::SqliteConnection;

use crate::queries::{Engine, ReadQuery, WriteQuery};
use crate::{DbError, Position, PositionRepr, ServerStats, Written};

/// The schema, embedded at compile time so the binary carries its own migrations.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's write lock before giving up.
/// Long enough to ride out a burst of writes, short enough that a request never hangs.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free pooled connection before the database counts as
/// unavailable (the application answers 503 rather than hanging).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL lets readers proceed while one writer writes; a handful of connections is plenty for
/// one file on one machine.
const MAX_CONNECTIONS: u32 = 8;

pub(crate) struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    pub(crate) async fn open(path: &Path) -> Result<Sqlite, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| DbError::Unavailable {
                    doing: "creating the database directory",
                    cause: format!("{}: {e}", dir.display()),
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only an OS crash can
            // lose the last transactions, which is the usual trade for write throughput.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| DbError::Unavailable {
                doing: "opening the database file",
                cause: format!("{}: {e}", path.display()),
            })?;
        MIGRATOR.run(&pool).await.map_err(|e| DbError::Other {
            doing: "applying migrations",
            cause: format!("{}: {e}", path.display()),
        })?;
        tracing::info!(path = %path.display(), "sqlite database ready");
        Ok(Sqlite { pool })
    }
}

impl Engine for Sqlite {
    type Conn = SqliteConnection;
    const NAME: &'static str = "sqlite";

    /// One copy of the data: every read already sees every committed write, so `after`
    /// needs no waiting.
    async fn read<T: Send>(
        &self,
        _after: Option<&Position>,
        doing: &'static str,
        query: impl ReadQuery<SqliteConnection, T>,
    ) -> Result<T, DbError> {
        let mut conn = self.pool.acquire().await.map_err(classify(doing))?;
        query(&mut conn).await.map_err(classify(doing))
    }

    async fn write<T: Send>(
        &self,
        doing: &'static str,
        query: impl WriteQuery<SqliteConnection, T>,
    ) -> Result<Written<T>, DbError> {
        let mut conn = self.pool.acquire().await.map_err(classify(doing))?;
        let value = query(&mut conn).await.map_err(|e| {
            if crate::is_unique_violation(&e) {
                DbError::Conflict { what: "username" }
            } else {
                classify(doing)(e)
            }
        })?;
        Ok(Written {
            value,
            position: Position(PositionRepr::Sqlite),
        })
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify("checking the database"))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    /// Empty: SQLite is no server but a file inside this process.
    fn stats(&self) -> Vec<ServerStats> {
        Vec::new()
    }
}

/// SQLite primary result codes that mean "the storage cannot serve us right now" rather
/// than "this query is wrong": BUSY, LOCKED, IOERR, FULL, CANTOPEN.
const UNAVAILABLE_CODES: [i64; 5] = [5, 6, 10, 13, 14];

/// Sorts an engine error into the [`DbError`] variant that tells the caller what to do.
fn classify(doing: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |err| {
        let unavailable = match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(e) => e
                .code()
                .and_then(|code| code.parse::<i64>().ok())
                // Extended result codes keep the primary code in the low byte.
                .is_some_and(|code| UNAVAILABLE_CODES.contains(&(code & 0xff))),
            _ => false,
        };
        let cause = err.to_string();
        if unavailable {
            DbError::Unavailable { doing, cause }
        } else {
            DbError::Other { doing, cause }
        }
    }
}
