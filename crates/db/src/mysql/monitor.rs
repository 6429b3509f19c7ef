//! The monitor: checks every server every [`MONITOR_INTERVAL`], marks it up or down,
//! and records how far each replica is behind.

use super::*;

/// What a replica said about its replication threads.
pub(super) struct ReplicaStatus {
    pub(super) io_running: String,
    pub(super) sql_running: bool,
    /// `None` while the SQL thread is stopped, or idle with the IO thread down.
    pub(super) behind: Option<u64>,
    pub(super) error: String,
}

/// Checks every server forever, every [`MONITOR_INTERVAL`].
pub(super) async fn monitor(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        check_all(&shared).await;
    }
}

pub(super) async fn check_all(shared: &Shared) {
    let primary = async {
        let ok = tokio::time::timeout(CHECK_TIMEOUT, async {
            let mut conn = shared.primary.pool.acquire().await?;
            conn.ping().await
        })
        .await;
        match ok {
            Ok(Ok(())) => {
                shared.primary.mark_up();
                shared.primary.health.lock().expect("health lock").problem = None;
            }
            Ok(Err(e)) => shared.primary.mark_down(e.to_string()),
            Err(_) => shared
                .primary
                .mark_down(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    };
    let replicas =
        futures_util::future::join_all(shared.replicas.iter().map(|r| check_replica(shared, r)));
    tokio::join!(primary, replicas);
}

async fn check_replica(shared: &Shared, replica: &Member) {
    let status = tokio::time::timeout(CHECK_TIMEOUT, async {
        let mut conn = replica.pool.acquire().await?;
        replica_status(shared.flavor, &mut conn).await
    })
    .await;
    let now = Instant::now();
    let status = match status {
        Ok(Ok(Some(status))) => status,
        Ok(Ok(None)) => {
            return replica.mark_down(
                "not replicating: no replication configured (CHANGE MASTER TO ...)".into(),
            )
        }
        Ok(Err(e)) => return replica.mark_down(e.to_string()),
        Err(_) => return replica.mark_down(format!("no answer within {CHECK_TIMEOUT:?}")),
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
    health.problem = if !status.sql_running {
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
