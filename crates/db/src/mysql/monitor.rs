//! The monitor: checks every server every [`MONITOR_INTERVAL`], on a connection of its
//! own to each, marks it up or down, records how far each replica is behind and whether
//! each server is writable, and moves the primary role after a promotion.

use super::*;

/// What a replica said about its replication threads.
pub(super) struct ReplicaStatus {
    pub(super) io_running: String,
    pub(super) sql_running: bool,
    /// `None` while the SQL thread is stopped, or idle with the IO thread down.
    pub(super) behind: Option<u64>,
    pub(super) error: String,
}

/// Checks every server every [`MONITOR_INTERVAL`] until `stop` says so (or its sender,
/// owned by the engine, is gone).
pub(super) async fn monitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let round = async {
            tokio::time::sleep(MONITOR_INTERVAL).await;
            check_all(&shared).await;
        };
        tokio::select! {
            () = round => {}
            // Each check is bounded by CHECK_TIMEOUT, but a round need not finish: its
            // queries are cancelled with it and hold nothing.
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// What one server answered this round: whether it is writable, and its replica status
/// (`None`: it replicates from nobody).
type Answer = Result<(bool, Option<ReplicaStatus>), String>;

/// One round: every server checked at once; the primary role moved if the current
/// primary is gone or read-only and exactly one other server is a writable non-replica
/// (a promotion happened); then each server judged in the role it has after that move.
/// Judged before it, the server just promoted would be "writable beside the primary" and
/// marked down for a moment, leaving reads no replica to go to.
pub(super) async fn check_all(shared: &Shared) {
    let answers: Vec<Answer> = futures_util::future::join_all(
        shared
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| ask(shared, m, i == shared.primary.load(Relaxed))),
    )
    .await;
    let primary = choose_primary(shared, &answers);
    for (i, (member, answer)) in shared.members.iter().zip(&answers).enumerate() {
        match answer {
            Err(problem) => member.mark_down(problem.clone()),
            Ok((writable, status)) => {
                member.writable.store(*writable, Relaxed);
                if i == primary {
                    check_primary(member, *writable, status.is_some());
                } else {
                    check_replica(shared, member, *writable, status.as_ref());
                }
            }
        }
    }
    shared.set_primary(primary);
}

/// Which server is the primary after this round's answers: the current one while it is
/// writable and replicates from nobody; else the one other server that is, if exactly one
/// is. Two or more such servers are two primaries: the role stays where it is and an
/// error is logged, because guessing could split the data.
fn choose_primary(shared: &Shared, answers: &[Answer]) -> usize {
    let primary = shared.primary.load(Relaxed);
    let is_primary_like = |a: &Answer| matches!(a, Ok((true, None)));
    if is_primary_like(&answers[primary]) {
        shared.split_seen.store(false, Relaxed);
        return primary;
    }
    let candidates: Vec<usize> = (0..answers.len())
        .filter(|&i| i != primary && is_primary_like(&answers[i]))
        .collect();
    match candidates.as_slice() {
        [] => {
            shared.split_seen.store(false, Relaxed);
            primary
        }
        [one] => {
            shared.split_seen.store(false, Relaxed);
            *one
        }
        many => {
            // Said once, not every round, while it lasts.
            if !shared.split_seen.swap(true, Relaxed) {
                tracing::error!(
                    servers = ?many.iter().map(|&i| &shared.members[i].name).collect::<Vec<_>>(),
                    "more than one database server is writable and replicates from \
                     nobody; writes stay off them until all but one are fenced \
                     (SET GLOBAL read_only=1)"
                );
            }
            primary
        }
    }
}

/// Asks one server whether it is writable and what its replica status is, on the
/// monitor's own connection to it ([`Member::check`]). The primary may refuse its replica
/// status (a user without `REPLICATION CLIENT`, enough for a site with no replicas): it
/// then counts as replicating from nobody, not as down. A server not yet known to have
/// the schema is also asked whether it has applied it ([`Shared::schema`]).
async fn ask(shared: &Shared, member: &Member, is_primary: bool) -> Answer {
    let flavor = shared.flavor;
    let kept = member.check.lock().expect("check lock").take();
    let answer = tokio::time::timeout(CHECK_TIMEOUT, async {
        let mut conn = match kept {
            Some(conn) => conn,
            None => MySqlConnection::connect_with(&member.pool.connect_options()).await?,
        };
        let read_only: i64 = sqlx::query_scalar("SELECT CAST(@@GLOBAL.read_only AS SIGNED)")
            .fetch_one(&mut conn)
            .await?;
        let status = match replica_status(flavor, &mut conn).await {
            Err(sqlx::Error::Database(_)) if is_primary => None,
            other => other?,
        };
        if !member.has_schema.load(Relaxed) {
            let applied: i64 = sqlx::query_scalar(flavor.applied_sql())
                .bind(&shared.schema)
                .fetch_one(&mut conn)
                .await?;
            if applied == 1 {
                member.has_schema.store(true, Relaxed);
            }
        }
        Ok::<_, sqlx::Error>((conn, read_only == 0, status))
    })
    .await;
    match answer {
        Ok(Ok((conn, writable, status))) => {
            *member.check.lock().expect("check lock") = Some(conn);
            Ok((writable, status))
        }
        // The connection is dropped with the failed check: the next one reconnects.
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

fn check_primary(primary: &Member, writable: bool, replicating: bool) {
    primary.mark_up();
    primary.health.lock().expect("health lock").problem = if !writable {
        Some("read-only: demoted or fenced; writes wait for a new primary".into())
    } else if replicating {
        Some("replicates from another server: it is no primary".into())
    } else {
        None
    };
}

fn check_replica(
    shared: &Shared,
    replica: &Member,
    writable: bool,
    status: Option<&ReplicaStatus>,
) {
    let now = Instant::now();
    let Some(status) = status else {
        return replica.mark_down(if writable {
            // An old primary that came back on its own, most likely: it must not take
            // writes from anyone else either.
            "writable and replicating from nobody, beside the primary: fence it and let it \
             rejoin (db::failover::rejoin)"
                .into()
        } else {
            "not replicating: no replication configured (CHANGE MASTER TO ...)".into()
        });
    };
    let mut health = replica.health.lock().expect("health lock");
    match (status.sql_running, status.behind) {
        (true, Some(secs)) => {
            let lag = Duration::from_secs(secs);
            health.lag = Some(lag);
            health.current_at = now.checked_sub(lag);
        }
        // Unknown lag: count it from when the data was last known current.
        _ => health.lag = health.current_at.map(|at| now - at),
    }
    health.problem = if !replica.has_schema.load(Relaxed) {
        Some(format!(
            "has not yet applied the schema (the primary's migrations, at {}); reads \
             skip it until it has",
            shared.schema
        ))
    } else if !status.sql_running {
        Some(format!(
            "SQL thread stopped: not applying the primary's writes {}",
            status.error
        ))
    } else if status.io_running != "Yes" {
        Some(format!(
            "IO thread {}: not receiving the primary's writes {}",
            status.io_running, status.error
        ))
    } else if !shared.lag_ok(health.lag) {
        Some(format!(
            "lagging {:?}, more than max_replica_lag {:?}",
            health.lag.unwrap_or_default(),
            shared.max_lag
        ))
    } else {
        None
    };
    drop(health);
    replica.mark_up();
}

pub(super) async fn replica_status(
    flavor: Flavor,
    conn: &mut MySqlConnection,
) -> Result<Option<ReplicaStatus>, sqlx::Error> {
    let sql = flavor.replica_status();
    let Some(row) = sqlx::query(sql.query).fetch_optional(conn).await? else {
        return Ok(None);
    };
    let text = |col: &str| -> Result<String, sqlx::Error> {
        // Status columns are text; some servers send them as binary strings.
        let bytes: Option<Vec<u8>> = row.try_get(col)?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    };
    let behind: Option<u64> = row.try_get(sql.behind)?;
    let io_error = text(sql.io_error)?;
    let sql_error = text(sql.sql_error)?;
    let error = [io_error, sql_error]
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Some(ReplicaStatus {
        io_running: text(sql.io)?,
        sql_running: text(sql.sql)? == "Yes",
        behind,
        error: if error.is_empty() {
            String::new()
        } else {
            format!("({error})")
        },
    }))
}
