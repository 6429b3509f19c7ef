//! Where each query goes: writes to the primary (and only while it is writable), reads to
//! a usable replica that has the reader's last write, else to the primary.

use super::*;

/// How long a write waits for a new primary while the current one is up but read-only:
/// that is a switchover in progress (the old primary is made read-only first, then the
/// replica promoted), which the monitor notices within [`MONITOR_INTERVAL`]. A write then
/// pauses instead of failing. A primary that is down fails writes at once, as before:
/// waiting would only hold the request while nobody is promoting.
const WRITE_PAUSE: Duration = Duration::from_secs(2);

impl Shared {
    /// The next replica reads may use: up, with the schema, and not too far behind; or,
    /// while the primary is down, any replica that is up with the schema (stale data beats
    /// no data, missing tables do not). Never the primary.
    fn pick_replica(&self, primary_up: bool) -> Option<&Member> {
        let primary = self.primary.load(Relaxed);
        let n = self.members.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| i != primary)
            .map(|i| &self.members[i])
            .find(|r| {
                r.is_up() && r.has_schema.load(Relaxed) && (!primary_up || self.lag_ok(r.lag()))
            })
    }

    pub(super) async fn read<T>(
        &self,
        after: Option<&Position>,
        doing: &'static str,
        query: &impl ReadQuery<MySqlConnection, T>,
    ) -> Result<T, DbError> {
        let primary_up = self.primary().is_up();
        let wait_for = match after.map(|p| &p.0) {
            Some(PositionRepr::Gtid(gtid)) => Some(gtid.as_str()),
            // The write's GTID is unknown: only the primary surely has it.
            Some(PositionRepr::Primary) if primary_up => {
                return self.read_primary(doing, query).await
            }
            _ => None,
        };
        if let Some(replica) = self.pick_replica(primary_up) {
            match tokio::time::timeout(REPLICA_ACQUIRE_TIMEOUT, replica.pool.acquire()).await {
                Ok(Ok(mut conn)) => {
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
                Ok(Err(e)) => replica.mark_down(e.to_string()),
                Err(_) => replica.mark_down(format!(
                    "no free connection within {REPLICA_ACQUIRE_TIMEOUT:?}"
                )),
            }
        }
        self.read_primary(doing, query).await
    }

    async fn read_primary<T>(
        &self,
        doing: &'static str,
        query: &impl ReadQuery<MySqlConnection, T>,
    ) -> Result<T, DbError> {
        let primary = self.primary();
        let mut conn = self.primary_conn(primary, doing).await?;
        let value = query(&mut conn)
            .await
            .map_err(|e| primary_failed(primary, doing, e))?;
        primary.reads.fetch_add(1, Relaxed);
        Ok(value)
    }

    /// Asks a replica to wait until it has applied `gtid`, at most `wait_timeout`. False
    /// when it has not (or cannot say): the caller goes to the primary.
    async fn wait(&self, conn: &mut MySqlConnection, gtid: &str) -> bool {
        match self
            .flavor
            .applied_within(conn, gtid, self.wait_timeout)
            .await
        {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(error = %e, gtid, "waiting for a GTID on a replica failed");
                false
            }
        }
    }

    /// A connection to `primary`, or at once [`DbError::Unavailable`] when the monitor
    /// has seen it down (so requests do not each wait for a connect timeout).
    async fn primary_conn(
        &self,
        primary: &Member,
        doing: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, DbError> {
        if !primary.is_up() {
            let problem = primary.health.lock().expect("health lock").problem.clone();
            return Err(DbError::Unavailable {
                doing,
                cause: format!(
                    "the primary {} is down: {}",
                    primary.address,
                    problem.unwrap_or_default()
                ),
            });
        }
        primary
            .pool
            .acquire()
            .await
            .map_err(|e| primary_failed(primary, doing, e))
    }

    /// A connection for a write: to the primary, checked writable on that very
    /// connection. A read-only primary is being replaced (switchover) or was fenced: the
    /// write waits until `deadline` (at most [`WRITE_PAUSE`]) for the monitor to find the new
    /// primary.
    ///
    /// The check costs one round trip per write, next to the write's own commit (an fsync,
    /// and a replica's acknowledgement under semi-synchronous replication). It is what
    /// keeps a write off a demoted server even for an application user whom `read_only`
    /// does not stop (one with `SUPER` or `READ ONLY ADMIN`); for an ordinary user the
    /// server refuses such a write itself (error 1290), which is classified the same.
    async fn writable_conn(
        &self,
        doing: &'static str,
        deadline: tokio::time::Instant,
    ) -> Result<(&Member, sqlx::pool::PoolConnection<sqlx::MySql>), DbError> {
        let mut generation = self.generation.subscribe();
        loop {
            // Seen before the primary is read, so a change made after this is waited
            // for below, not missed.
            generation.borrow_and_update();
            let primary = self.primary();
            let mut conn = self.primary_conn(primary, doing).await?;
            let read_only: i64 = sqlx::query_scalar("SELECT CAST(@@GLOBAL.read_only AS SIGNED)")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| primary_failed(primary, doing, e))?;
            if read_only == 0 {
                return Ok((primary, conn));
            }
            primary.writable.store(false, Relaxed);
            drop(conn);
            // Wait for the monitor to move the role; the generation changes when it does.
            let moved = tokio::time::timeout_at(deadline, generation.changed()).await;
            if !matches!(moved, Ok(Ok(()))) {
                return Err(DbError::Unavailable {
                    doing,
                    cause: format!(
                        "the primary {} ({}) is read-only (demoted or fenced) and no new \
                         primary was found within {WRITE_PAUSE:?}; promote a replica",
                        primary.name, primary.address
                    ),
                });
            }
        }
    }

    pub(super) async fn write<T>(
        &self,
        doing: &'static str,
        query: impl WriteQuery<MySqlConnection, T>,
    ) -> Result<Written<T>, DbError> {
        let deadline = tokio::time::Instant::now() + WRITE_PAUSE;
        let (primary, mut conn, value) = loop {
            let (primary, mut conn) = self.writable_conn(doing, deadline).await?;
            match query(&mut conn).await {
                Ok(value) => break (primary, conn, value),
                // Made read-only between the check and the write (a switchover began):
                // nothing was written, so it is run again on the new primary.
                Err(e) if is_read_only(&e) && tokio::time::Instant::now() < deadline => {
                    primary.writable.store(false, Relaxed);
                }
                Err(e) if crate::is_unique_violation(&e) => {
                    return Err(DbError::Conflict { what: "username" })
                }
                Err(e) => return Err(primary_failed(primary, doing, e)),
            }
        };
        primary.writes.fetch_add(1, Relaxed);
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

/// Marks `primary` down when the error says it is unreachable, and names it in the error.
/// Not when no pooled connection came free in time: that is a busy server, and marking
/// it down would fail every other write at once until the monitor (which checks on a
/// connection of its own) found it up again.
fn primary_failed(primary: &Member, doing: &'static str, e: sqlx::Error) -> DbError {
    if is_read_only(&e) {
        // Up, but demoted or fenced: the next write waits for the new primary.
        primary.writable.store(false, Relaxed);
    } else if is_unavailable(&e) && !matches!(e, sqlx::Error::PoolTimedOut) {
        primary.mark_down(e.to_string());
    }
    match classify(doing)(e) {
        DbError::Unavailable { doing, cause } => DbError::Unavailable {
            doing,
            cause: format!("the primary {}: {cause}", primary.address),
        },
        other => other,
    }
}
