//! The foobar queries, written once for both engines.
//!
//! Each query is its SQL text, its arguments and the type its rows become, written here
//! once. Two small traits keep the engines apart from it:
//!
//! - [`Conn`]: what a query needs from one connection (fetch rows, execute, begin a
//!   transaction), implemented for SQLite's and MySQL's connection types by one macro;
//! - [`Engine`]: where a query runs. SQLite runs everything on its one pool; the MySQL
//!   engine sends writes to the primary and reads to a replica (or the primary), honours
//!   the reader's [`Position`] and turns the write's GTID into one (`mysql/routing.rs`).
//!
//! [`Store`] is the object-safe face of every engine: it is implemented once, here, for
//! each [`Engine`], so [`crate::Db`] holds an `Arc<dyn Store>` and never names an engine.
//!
//! The engines speak the same SQL but for one word: how to join two tables in the
//! written order ([`Dialect::ordered_join`]).

use std::future::Future;

use futures_util::future::BoxFuture;
use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection as _, FromRow};

use crate::{Counts, DbError, Position, Post, ServerStats, User, Written};

/// Where the two engines' SQL differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    /// MariaDB and MySQL: the same statements here.
    MySql,
}

impl Dialect {
    /// A join that keeps the table on its left as the outer loop. On MariaDB the
    /// optimizer otherwise may start from `users` and sort every post of theirs to find
    /// the newest page (measured: ~100x slower timelines at 25k posts); SQLite spells the
    /// same promise `CROSS JOIN`.
    fn ordered_join(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CROSS JOIN",
            Dialect::MySql => "STRAIGHT_JOIN",
        }
    }

    /// Posts joined with their author, the shape every post query returns.
    fn post_columns(self) -> String {
        format!(
            "SELECT p.id, p.user_id, u.username, p.body, p.created_at \
             FROM posts p {} users u ON u.id = p.user_id",
            self.ordered_join()
        )
    }

    /// A page of posts: the page's ids are chosen from `posts` alone, in a derived
    /// table, and only those rows are read and joined with their authors. `filter` (with
    /// `?`s) and the `LIMIT ?` apply to the ids. The rows come back in no set order; see
    /// [`newest_first`].
    ///
    /// Why not one join with `ORDER BY p.id DESC LIMIT ?`: MariaDB 10.11 then chose, per
    /// execution, between walking the primary key backwards (51 rows read) and reading
    /// every post, joining and sorting them all; under concurrent load most executions of
    /// the same prepared statement took the second plan. And because `body` is `TEXT`, its
    /// temporary table went to disk: a file created and deleted in the replica's tmpdir
    /// per timeline, where the replica spent 0.5 ms of CPU per request in ext4's inode
    /// code (perf) and capped the site at ~1,500 timelines/s. The ids alone make a small
    /// in-memory table with one sensible plan. An outer `ORDER BY`, too, went through a
    /// temporary table on disk in two executions out of three under load, so the page is
    /// put in order in Rust. SQLite runs the same shape with its primary key.
    fn page_of_posts(self, filter: &str) -> String {
        let join = self.ordered_join();
        format!(
            "SELECT p.id, p.user_id, u.username, p.body, p.created_at \
             FROM (SELECT id FROM posts {filter} ORDER BY id DESC LIMIT ?) page \
             {join} posts p ON p.id = page.id \
             {join} users u ON u.id = p.user_id"
        )
    }
}

/// A user row's columns.
const USER_COLUMNS: &str = "SELECT id, username, password_hash, created_at FROM users";

/// The rows of a [`Dialect::page_of_posts`] query, newest first.
fn newest_first(mut posts: Vec<Post>) -> Vec<Post> {
    posts.sort_unstable_by_key(|p| std::cmp::Reverse(p.id));
    posts
}

/// One argument of a statement. The queries bind only these three types, so one enum
/// carries them to either engine.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// One statement: its SQL and its arguments in order.
pub(crate) struct Stmt<'a> {
    sql: std::borrow::Cow<'static, str>,
    args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    fn new(sql: impl Into<std::borrow::Cow<'static, str>>) -> Stmt<'a> {
        Stmt {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    fn int(mut self, value: i64) -> Self {
        self.args.push(Arg::Int(value));
        self
    }

    fn text(mut self, value: &'a str) -> Self {
        self.args.push(Arg::Text(value));
        self
    }

    fn blob(mut self, value: &'a [u8]) -> Self {
        self.args.push(Arg::Blob(value));
        self
    }
}

/// A row type both engines can decode. `#[derive(sqlx::FromRow)]` makes one impl generic
/// over the row type, so [`User`], [`Post`] and tuples qualify; the mapping is written
/// once, by the derive.
pub(crate) trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, MySqlRow> + Send + Unpin
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, MySqlRow> + Send + Unpin
{
}

/// What a query needs from one connection. `sqlx::Connection` gives transactions, whose
/// connection is again `Self`.
pub(crate) trait Conn: sqlx::Connection {
    /// Which SQL this connection speaks.
    const DIALECT: Dialect;

    /// Every row the statement returns.
    fn fetch_all<'s, T: Record>(
        &'s mut self,
        stmt: Stmt<'s>,
    ) -> BoxFuture<'s, Result<Vec<T>, sqlx::Error>>;

    /// The first row, if any.
    fn fetch_optional<'s, T: Record>(
        &'s mut self,
        stmt: Stmt<'s>,
    ) -> BoxFuture<'s, Result<Option<T>, sqlx::Error>>;

    /// Runs a statement that returns no rows; the id of the row it inserted, if any.
    fn execute<'s>(&'s mut self, stmt: Stmt<'s>) -> BoxFuture<'s, Result<i64, sqlx::Error>>;
}

/// Binds a [`Stmt`]'s arguments to a sqlx query (`query` or `query_as`) in order.
macro_rules! bound {
    ($query:expr, $stmt:expr) => {{
        let mut query = $query;
        for arg in &$stmt.args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::Blob(v) => query.bind(v),
            };
        }
        query
    }};
}

/// [`Conn`] for one engine's connection type: the same calls, only the types and the
/// name of the inserted row's id differ.
macro_rules! conn_for {
    ($conn:ty, $db:ty, $dialect:expr, |$done:ident| $insert_id:expr) => {
        impl Conn for $conn {
            const DIALECT: Dialect = $dialect;

            fn fetch_all<'s, T: Record>(
                &'s mut self,
                stmt: Stmt<'s>,
            ) -> BoxFuture<'s, Result<Vec<T>, sqlx::Error>> {
                Box::pin(async move {
                    bound!(sqlx::query_as::<$db, T>(&stmt.sql), stmt)
                        .fetch_all(self)
                        .await
                })
            }

            fn fetch_optional<'s, T: Record>(
                &'s mut self,
                stmt: Stmt<'s>,
            ) -> BoxFuture<'s, Result<Option<T>, sqlx::Error>> {
                Box::pin(async move {
                    bound!(sqlx::query_as::<$db, T>(&stmt.sql), stmt)
                        .fetch_optional(self)
                        .await
                })
            }

            fn execute<'s>(
                &'s mut self,
                stmt: Stmt<'s>,
            ) -> BoxFuture<'s, Result<i64, sqlx::Error>> {
                Box::pin(async move {
                    let $done = bound!(sqlx::query::<$db>(&stmt.sql), stmt)
                        .execute(self)
                        .await?;
                    Ok($insert_id)
                })
            }
        }
    };
}

conn_for!(SqliteConnection, sqlx::Sqlite, Dialect::Sqlite, |done| done
    .last_insert_rowid());
// MySQL's ids are BIGINT (signed) columns, so the unsigned insert id always fits.
conn_for!(
    MySqlConnection,
    sqlx::MySql,
    Dialect::MySql,
    |done| done.last_insert_id() as i64
);

/// A query to run on one connection. A read may be run again on another server when the
/// first fails, so it is `Fn`; it owns its arguments because the connection it gets
/// lives shorter than any borrow it could hold.
pub(crate) trait ReadQuery<C, T>:
    for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync
{
}

impl<C, T, F> ReadQuery<C, T> for F where
    F: for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync
{
}

/// A write, run on the server that takes writes. `Fn` like a read: a write the server
/// refused because it had just been made read-only (a switchover) changed nothing, and
/// is run again on the new primary.
pub(crate) trait WriteQuery<C, T>:
    for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync
{
}

impl<C, T, F> WriteQuery<C, T> for F where
    F: for<'c> Fn(&'c mut C) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + Sync
{
}

/// Where queries run: one engine's pools and routing. Errors come back already sorted
/// into [`DbError`] by the engine, which knows its own error codes.
pub(crate) trait Engine: Send + Sync + 'static {
    /// The connection queries run on.
    type Conn: Conn;

    /// `sqlite` or `mysql`, for `Debug`.
    const NAME: &'static str;

    /// Runs a read where it may be answered, after the writes `after` names.
    fn read<T: Send>(
        &self,
        after: Option<&Position>,
        doing: &'static str,
        query: impl ReadQuery<Self::Conn, T>,
    ) -> impl Future<Output = Result<T, DbError>> + Send;

    /// Runs a write where writes go, and says where it landed.
    fn write<T: Send>(
        &self,
        doing: &'static str,
        query: impl WriteQuery<Self::Conn, T>,
    ) -> impl Future<Output = Result<Written<T>, DbError>> + Send;

    /// Checks the database answers a trivial query.
    fn ping(&self) -> impl Future<Output = Result<(), DbError>> + Send;

    /// Closes the pools and stops any background task.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Per-server health and traffic.
    fn stats(&self) -> Vec<ServerStats>;
}

/// Every operation of [`crate::Db`], object-safe so `Db` can hold any engine. See the
/// methods of `Db` for what each does.
pub(crate) trait Store: Send + Sync {
    fn engine(&self) -> &'static str;
    fn close(&self) -> BoxFuture<'_, ()>;
    fn stats(&self) -> Vec<ServerStats>;
    fn ping(&self) -> BoxFuture<'_, Result<(), DbError>>;
    fn create_user<'a>(
        &'a self,
        username: &'a str,
        password_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Written<User>, DbError>>;
    fn user_by_name<'a>(
        &'a self,
        username: &'a str,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>>;
    fn user_by_id<'a>(
        &'a self,
        id: i64,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>>;
    fn create_session<'a>(
        &'a self,
        token_hash: &'a [u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, Result<Written<()>, DbError>>;
    fn session_user<'a>(
        &'a self,
        token_hash: &'a [u8],
        now: i64,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>>;
    fn delete_session<'a>(
        &'a self,
        token_hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Written<()>, DbError>>;
    fn create_post<'a>(
        &'a self,
        user_id: i64,
        body: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Written<Post>, DbError>>;
    fn timeline<'a>(
        &'a self,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Vec<Post>, DbError>>;
    fn user_posts<'a>(
        &'a self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Vec<Post>, DbError>>;
    fn counts<'a>(&'a self, after: Option<&'a Position>) -> BoxFuture<'a, Result<Counts, DbError>>;
}

impl<E: Engine> Store for E {
    fn engine(&self) -> &'static str {
        E::NAME
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Engine::close(self))
    }

    fn stats(&self) -> Vec<ServerStats> {
        Engine::stats(self)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DbError>> {
        Box::pin(Engine::ping(self))
    }

    fn create_user<'a>(
        &'a self,
        username: &'a str,
        password_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Written<User>, DbError>> {
        let (username, password_hash) = (username.to_owned(), password_hash.to_owned());
        Box::pin(self.write("creating a user", move |c: &mut E::Conn| {
            let (username, password_hash) = (username.clone(), password_hash.clone());
            Box::pin(async move {
                let id = c
                    .execute(
                        Stmt::new(
                            "INSERT INTO users (username, password_hash, created_at) \
                             VALUES (?, ?, ?)",
                        )
                        .text(&username)
                        .text(&password_hash)
                        .int(now),
                    )
                    .await?;
                Ok(User {
                    id,
                    username,
                    password_hash,
                    created_at: now,
                })
            })
        }))
    }

    fn user_by_name<'a>(
        &'a self,
        username: &'a str,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>> {
        let username = username.to_owned();
        Box::pin(self.read(
            after,
            "looking up a user by name",
            move |c: &mut E::Conn| {
                let username = username.clone();
                Box::pin(async move {
                    c.fetch_optional(
                        Stmt::new(format!("{USER_COLUMNS} WHERE username = ?")).text(&username),
                    )
                    .await
                })
            },
        ))
    }

    fn user_by_id<'a>(
        &'a self,
        id: i64,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>> {
        Box::pin(
            self.read(after, "looking up a user by id", move |c: &mut E::Conn| {
                Box::pin(async move {
                    c.fetch_optional(Stmt::new(format!("{USER_COLUMNS} WHERE id = ?")).int(id))
                        .await
                })
            }),
        )
    }

    fn create_session<'a>(
        &'a self,
        token_hash: &'a [u8],
        user_id: i64,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'a, Result<Written<()>, DbError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(self.write("creating a session", move |c: &mut E::Conn| {
            let token_hash = token_hash.clone();
            Box::pin(async move {
                let mut tx = c.begin().await?;
                // Expired sessions go as new ones come, so the table does not grow
                // without bound.
                tx.execute(Stmt::new("DELETE FROM sessions WHERE expires_at <= ?").int(now))
                    .await?;
                tx.execute(
                    Stmt::new(
                        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .blob(&token_hash)
                    .int(user_id)
                    .int(now)
                    .int(expires_at),
                )
                .await?;
                tx.commit().await
            })
        }))
    }

    fn session_user<'a>(
        &'a self,
        token_hash: &'a [u8],
        now: i64,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Option<User>, DbError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(
            self.read(after, "looking up a session", move |c: &mut E::Conn| {
                let token_hash = token_hash.clone();
                Box::pin(async move {
                    c.fetch_optional(
                        Stmt::new(
                            "SELECT u.id, u.username, u.password_hash, u.created_at \
                             FROM sessions s JOIN users u ON u.id = s.user_id \
                             WHERE s.token_hash = ? AND s.expires_at > ?",
                        )
                        .blob(&token_hash)
                        .int(now),
                    )
                    .await
                })
            }),
        )
    }

    fn delete_session<'a>(
        &'a self,
        token_hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Written<()>, DbError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(self.write("deleting a session", move |c: &mut E::Conn| {
            let token_hash = token_hash.clone();
            Box::pin(async move {
                c.execute(Stmt::new("DELETE FROM sessions WHERE token_hash = ?").blob(&token_hash))
                    .await?;
                Ok(())
            })
        }))
    }

    fn create_post<'a>(
        &'a self,
        user_id: i64,
        body: &'a str,
        now: i64,
    ) -> BoxFuture<'a, Result<Written<Post>, DbError>> {
        let body = body.to_owned();
        Box::pin(self.write("creating a post", move |c: &mut E::Conn| {
            let body = body.clone();
            Box::pin(async move {
                let mut tx = c.begin().await?;
                let id = tx
                    .execute(
                        Stmt::new("INSERT INTO posts (user_id, body, created_at) VALUES (?, ?, ?)")
                            .int(user_id)
                            .text(&body)
                            .int(now),
                    )
                    .await?;
                // Read back in the same transaction: the author's name comes with it.
                let post: Option<Post> = tx
                    .fetch_optional(
                        Stmt::new(format!(
                            "{} WHERE p.id = ?",
                            <E::Conn as Conn>::DIALECT.post_columns()
                        ))
                        .int(id),
                    )
                    .await?;
                let post = post.ok_or(sqlx::Error::RowNotFound)?;
                tx.commit().await?;
                Ok(post)
            })
        }))
    }

    fn timeline<'a>(
        &'a self,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Vec<Post>, DbError>> {
        Box::pin(
            self.read(after, "loading the timeline", move |c: &mut E::Conn| {
                Box::pin(async move {
                    let sql = <E::Conn as Conn>::DIALECT.page_of_posts("WHERE id < ?");
                    // A plain range (no `? IS NULL OR`), so the primary key serves it.
                    let stmt = Stmt::new(sql)
                        .int(before_id.unwrap_or(i64::MAX))
                        .int(i64::from(limit));
                    Ok(newest_first(c.fetch_all(stmt).await?))
                })
            }),
        )
    }

    fn user_posts<'a>(
        &'a self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
        after: Option<&'a Position>,
    ) -> BoxFuture<'a, Result<Vec<Post>, DbError>> {
        Box::pin(
            self.read(after, "loading a user's posts", move |c: &mut E::Conn| {
                Box::pin(async move {
                    let sql =
                        <E::Conn as Conn>::DIALECT.page_of_posts("WHERE user_id = ? AND id < ?");
                    let stmt = Stmt::new(sql)
                        .int(user_id)
                        .int(before_id.unwrap_or(i64::MAX))
                        .int(i64::from(limit));
                    Ok(newest_first(c.fetch_all(stmt).await?))
                })
            }),
        )
    }

    fn counts<'a>(&'a self, after: Option<&'a Position>) -> BoxFuture<'a, Result<Counts, DbError>> {
        Box::pin(self.read(after, "counting rows", move |c: &mut E::Conn| {
            Box::pin(async move {
                let counts: Option<(i64, i64)> = c
                    .fetch_optional(Stmt::new(
                        "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM posts)",
                    ))
                    .await?;
                let (users, posts) = counts.ok_or(sqlx::Error::RowNotFound)?;
                Ok(Counts { users, posts })
            })
        }))
    }
}
