//! The embedded SQLite backend: one file, one pool, every query parameterised.
//!
//! SQLite keeps a single copy of the data, so every read sees every committed write and the
//! `after` positions that reads receive need no waiting here.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::FromRow;
use sqlx::Row;

use crate::{Counts, DbError, Position, PositionRepr, Post, User, Written};

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

/// Posts joined with their author, the shape every post query returns.
const POST_COLUMNS: &str =
    "SELECT p.id, p.user_id, u.username, p.body, p.created_at FROM posts p JOIN users u ON u.id = p.user_id";

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

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify("checking the database"))?;
        Ok(())
    }

    pub(crate) async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Written<User>, DbError> {
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?) \
             RETURNING id, username, password_hash, created_at",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if crate::is_unique_violation(&e) {
                DbError::Conflict { what: "username" }
            } else {
                classify("creating a user")(e)
            }
        })?;
        written(User::from_row(&row).map_err(classify("reading the new user"))?)
    }

    pub(crate) async fn user_by_name(
        &self,
        username: &str,
        _after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, created_at FROM users WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify("looking up a user by name"))?;
        row.as_ref()
            .map(User::from_row)
            .transpose()
            .map_err(classify("reading a user"))
    }

    pub(crate) async fn user_by_id(
        &self,
        id: i64,
        _after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        let row =
            sqlx::query("SELECT id, username, password_hash, created_at FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify("looking up a user by id"))?;
        row.as_ref()
            .map(User::from_row)
            .transpose()
            .map_err(classify("reading a user"))
    }

    pub(crate) async fn create_session(
        &self,
        token_hash: &[u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<Written<()>, DbError> {
        let doing = "creating a session";
        let mut tx = self.pool.begin().await.map_err(classify(doing))?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify(doing))?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(classify(doing))?;
        tx.commit().await.map_err(classify(doing))?;
        written(())
    }

    pub(crate) async fn session_user(
        &self,
        token_hash: &[u8],
        now: i64,
        _after: Option<&Position>,
    ) -> Result<Option<User>, DbError> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.password_hash, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = ? AND s.expires_at > ?",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify("looking up a session"))?;
        row.as_ref()
            .map(User::from_row)
            .transpose()
            .map_err(classify("reading a session's user"))
    }

    pub(crate) async fn delete_session(&self, token_hash: &[u8]) -> Result<Written<()>, DbError> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .map_err(classify("deleting a session"))?;
        written(())
    }

    pub(crate) async fn create_post(
        &self,
        user_id: i64,
        body: &str,
        now: i64,
    ) -> Result<Written<Post>, DbError> {
        let doing = "creating a post";
        let mut tx = self.pool.begin().await.map_err(classify(doing))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO posts (user_id, body, created_at) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(user_id)
        .bind(body)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(classify(doing))?;
        let row = sqlx::query(&format!("{POST_COLUMNS} WHERE p.id = ?"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify(doing))?;
        let post = Post::from_row(&row).map_err(classify(doing))?;
        tx.commit().await.map_err(classify(doing))?;
        written(post)
    }

    pub(crate) async fn timeline(
        &self,
        before_id: Option<i64>,
        limit: u32,
        _after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        let rows = sqlx::query(&format!(
            "{POST_COLUMNS} WHERE (?1 IS NULL OR p.id < ?1) ORDER BY p.id DESC LIMIT ?2"
        ))
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify("loading the timeline"))?;
        rows.iter()
            .map(Post::from_row)
            .collect::<Result<_, _>>()
            .map_err(classify("reading the timeline"))
    }

    pub(crate) async fn user_posts(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
        _after: Option<&Position>,
    ) -> Result<Vec<Post>, DbError> {
        let rows = sqlx::query(&format!(
            "{POST_COLUMNS} WHERE p.user_id = ?1 AND (?2 IS NULL OR p.id < ?2) \
             ORDER BY p.id DESC LIMIT ?3"
        ))
        .bind(user_id)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify("loading a user's posts"))?;
        rows.iter()
            .map(Post::from_row)
            .collect::<Result<_, _>>()
            .map_err(classify("reading a user's posts"))
    }

    pub(crate) async fn counts(&self, _after: Option<&Position>) -> Result<Counts, DbError> {
        let row = sqlx::query("SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM posts)")
            .fetch_one(&self.pool)
            .await
            .map_err(classify("counting rows"))?;
        Ok(Counts {
            users: row.try_get(0).map_err(classify("reading counts"))?,
            posts: row.try_get(1).map_err(classify("reading counts"))?,
        })
    }
}

/// Wraps a write's result with the (trivial) SQLite position.
fn written<T>(value: T) -> Result<Written<T>, DbError> {
    Ok(Written {
        value,
        position: Position(PositionRepr::Sqlite),
    })
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
