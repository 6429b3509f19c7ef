//! Failover against real MariaDB servers started by `db::managed` on free loopback ports:
//! semi-synchronous replication, promotion after a SIGKILL of the primary, fencing and
//! rejoin of the returning old primary, an errant old primary kept out, and a planned
//! switchover under reads and writes.
//!
//! These tests need `mariadbd` (Debian's `mariadb-server`, which `scripts/install-test-deps`
//! installs). Under `CI=true` a missing server fails the test; elsewhere it is skipped
//! with a loud message.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use db::failover::{self, OnNoReplicaAck, Topology};
use db::managed::{Managed, Spec};
use db::{Config, Db, MysqlConfig, ServerStats};
use sqlx::mysql::MySqlConnection;
use sqlx::{Connection, Row};

/// Running servers in a temporary directory. Field order matters: the servers are killed
/// (dropped) before the directory is removed.
struct Site {
    managed: Managed,
    config: MysqlConfig,
    _dir: tempfile::TempDir,
}

async fn site(replicas: usize) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        dir: dir.path().to_path_buf(),
        primary: server("primary", free_port()),
        replicas: (1..=replicas)
            .map(|i| server(&format!("replica{i}"), free_port()))
            .collect(),
    };
    let managed = Managed::start(&spec).await.expect("start MariaDB servers");
    Site {
        managed,
        config: MysqlConfig {
            primary: spec.primary,
            replicas: spec.replicas,
            max_replica_lag: Duration::from_secs(5),
            read_your_writes_timeout: Duration::from_millis(200),
        },
        _dir: dir,
    }
}

impl Site {
    fn topology(&self) -> Topology {
        self.managed
            .topology(OnNoReplicaAck::Fallback, Duration::from_secs(10))
    }

    /// The same, as a process that did not start the servers finds them.
    fn spec_topology(&self) -> Topology {
        let spec = Spec {
            dir: self._dir.path().to_path_buf(),
            primary: self.config.primary.clone(),
            replicas: self.config.replicas.clone(),
        };
        db::managed::topology(&spec, OnNoReplicaAck::Fallback, Duration::from_secs(10))
    }

    async fn admin(&mut self, name: &str) -> MySqlConnection {
        let instance = if name == "primary" {
            self.managed.primary()
        } else {
            let i: usize = name.trim_start_matches("replica").parse().unwrap();
            self.managed.replica(i - 1)
        };
        instance.admin().await.unwrap()
    }
}

fn stat<'a>(stats: &'a [ServerStats], name: &str) -> &'a ServerStats {
    stats.iter().find(|s| s.name == name).unwrap()
}

async fn global(conn: &mut MySqlConnection, sql: &str) -> String {
    let row = sqlx::query(sql).fetch_one(conn).await.unwrap();
    let bytes: Option<Vec<u8>> = row
        .try_get::<Option<Vec<u8>>, _>(row.len() - 1)
        .unwrap_or_else(|_| {
            row.try_get::<Option<i64>, _>(row.len() - 1)
                .unwrap()
                .map(|v| v.to_string().into_bytes())
        });
    String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
}

async fn status_var(conn: &mut MySqlConnection, name: &str) -> String {
    global(conn, &format!("SHOW GLOBAL STATUS LIKE '{name}'")).await
}

/// The ids of every post on a server, read as root.
async fn post_ids(conn: &mut MySqlConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM foobar.posts ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// Waits until a replica has applied everything `source` has, at most 15 s.
async fn caught_up(replica: &mut MySqlConnection, source: &mut MySqlConnection) {
    let pos = global(source, "SELECT CAST(@@GLOBAL.gtid_binlog_pos AS CHAR)").await;
    let waited: i64 = sqlx::query_scalar("SELECT CAST(MASTER_GTID_WAIT(?, 15) AS SIGNED)")
        .bind(&pos)
        .fetch_one(replica)
        .await
        .unwrap();
    assert_eq!(waited, 0, "the replica did not reach {pos}");
}

/// Polls `check` until it holds, for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a [`writer`] saw.
struct Writes {
    /// The ids of the acknowledged posts.
    acknowledged: Vec<i64>,
    failed: u32,
    /// The longest a write took (a pause while the primary changes).
    slowest: Duration,
}

/// Writes posts until told to stop (or for at most 20 s), with at most 2,000 attempts.
fn writer(db: Db, user_id: i64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Writes> {
    tokio::spawn(async move {
        let mut writes = Writes {
            acknowledged: Vec::new(),
            failed: 0,
            slowest: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..2_000 {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let started = Instant::now();
            match db.create_post(user_id, &format!("post {i}"), i).await {
                Ok(post) => {
                    writes.acknowledged.push(post.value.id);
                    writes.slowest = writes.slowest.max(started.elapsed());
                }
                Err(_) => {
                    writes.failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        writes
    })
}

/// Waits (at most 10 s) until no replica receives from the primary any more: what a
/// promotion waits for after the primary died.
/// Kills the primary, promotes replica1 once the replicas noticed, and waits until `db`
/// writes to it.
async fn kill_and_promote(s: &mut Site, db: &Db) {
    s.managed.primary().kill().await;
    until_dead(&s.topology()).await;
    failover::promote(&s.topology(), "primary").await.unwrap();
    eventually(5, "the Db follows the promotion", || {
        db.primary().as_deref() == Some("replica1")
    })
    .await;
}

async fn until_dead(topology: &Topology) {
    let old = topology.nodes.iter().find(|n| n.name == "primary").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = failover::survey(topology).await;
        if failover::receiving_from(&states, old).is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still receive: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the timeline until told to stop (or for at most 20 s, 100,000 reads); returns
/// how many succeeded and the errors of those that failed.
fn reader(db: Db, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    tokio::spawn(async move {
        let (mut reads, mut failed) = (0u32, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && reads < 100_000 {
            match db.timeline(None, 10, None).await {
                Ok(_) => reads += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        (reads, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semi_sync_waits_for_a_replica_or_falls_back_as_the_site_says() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(1).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("alice", "hash", 1).await.unwrap().value;
    let mut primary = s.admin("primary").await;
    assert_eq!(
        status_var(&mut primary, "Rpl_semi_sync_master_status").await,
        "ON"
    );
    let acked = |text: String| text.parse::<u64>().unwrap();
    let before = acked(status_var(&mut primary, "Rpl_semi_sync_master_yes_tx").await);
    db.create_post(user.id, "acknowledged", 2).await.unwrap();
    let after = acked(status_var(&mut primary, "Rpl_semi_sync_master_yes_tx").await);
    assert!(
        after > before,
        "the replica acknowledged the write: {before} -> {after}"
    );

    // "wait": with the replica gone, a write is not acknowledged to the application
    // until the replica is back and has it.
    s.managed
        .set_on_no_replica_ack(OnNoReplicaAck::Wait)
        .await
        .unwrap();
    s.managed.replica(0).kill().await;
    let pending = tokio::spawn({
        let db = db.clone();
        async move { db.create_post(user.id, "waits for a replica", 3).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pending.is_finished(),
        "a write was acknowledged with no replica"
    );
    s.managed.replica(0).restart().await.unwrap();
    let post = tokio::time::timeout(Duration::from_secs(15), pending)
        .await
        .expect("the write completes once the replica is back")
        .unwrap()
        .unwrap();
    // Acknowledged means in the replica's relay log (AFTER_SYNC), not yet applied:
    // the replica shows it once its SQL thread has run it.
    let mut replica = s.admin("replica1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !post_ids(&mut replica).await.contains(&post.value.id) {
        assert!(
            Instant::now() < deadline,
            "the acknowledged write is not applied on the replica 10 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // "fallback": with no replica connected, a write does not wait for one (the wait
    // could only end in the fallback): the primary goes on without an acknowledgement.
    s.managed
        .set_on_no_replica_ack(OnNoReplicaAck::Fallback)
        .await
        .unwrap();
    drop(replica);
    s.managed.replica(0).kill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_var(&mut primary, "Rpl_semi_sync_master_clients").await != "0" {
        assert!(
            Instant::now() < deadline,
            "the primary still counts a semi-synchronous replica 10 s after its kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unacked = acked(status_var(&mut primary, "Rpl_semi_sync_master_no_tx").await);
    let started = Instant::now();
    db.create_post(user.id, "not acknowledged by anyone", 4)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < failover::FALLBACK_AFTER / 2,
        "the write waited {took:?} with no replica to wait for"
    );
    assert_eq!(
        acked(status_var(&mut primary, "Rpl_semi_sync_master_no_tx").await),
        unacked + 1,
        "the write went out unacknowledged"
    );
    db.close().await;
    s.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_then_promotion_keeps_every_acknowledged_write() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(2).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("bob", "hash", 1).await.unwrap().value;
    let (mut primary, mut replica1, mut replica2) = (
        s.admin("primary").await,
        s.admin("replica1").await,
        s.admin("replica2").await,
    );
    caught_up(&mut replica1, &mut primary).await;
    caught_up(&mut replica2, &mut primary).await;
    drop((primary, replica1, replica2));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(db.clone(), user.id, stop.clone());
    let reading = reader(db.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;

    // While the primary lives, both replicas receive from it: the partition guard a
    // decider checks before promoting.
    let topology = s.topology();
    let old = topology.nodes.iter().find(|n| n.name == "primary").unwrap();
    let states = failover::survey(&topology).await;
    assert_eq!(
        failover::receiving_from(&states, old),
        vec!["replica1", "replica2"]
    );

    // Promoting a replica of a live primary would make two primaries: refused, and
    // nothing changes.
    let refused = failover::promote(&topology, "primary")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("still sends its writes to replica1, replica2")
            && refused.contains("switchover"),
        "{refused}"
    );
    assert_eq!(db.primary().as_deref(), Some("primary"));
    assert_eq!(db.primary_changes(), 0);

    s.managed.primary().kill().await;
    let killed = Instant::now();
    // Dead, it feeds nobody (the replicas' IO threads are reconnecting).
    until_dead(&topology).await;
    let promotion = failover::promote(&s.spec_topology(), "primary")
        .await
        .unwrap();
    assert_eq!(promotion.previous, "primary");
    assert!(promotion.left_out.is_empty(), "{:?}", promotion.left_out);
    assert_eq!(promotion.followers.len(), 1, "{promotion:?}");
    // The application's handle finds the new primary by itself.
    eventually(5, "the Db writes to the promoted replica", || {
        db.primary().as_deref() == Some(promotion.primary.as_str())
    })
    .await;
    let written = db
        .create_post(user.id, "after the failover", 99)
        .await
        .unwrap();
    let gap = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = writing.await.unwrap().acknowledged;
    acknowledged.push(written.value.id);
    let (reads, failed_reads) = reading.await.unwrap();
    assert!(failed_reads.is_empty(), "reads failed: {failed_reads:?}");
    assert!(reads > 50, "{reads} reads");
    assert!(acknowledged.len() > 5, "the writer wrote: {acknowledged:?}");
    eprintln!(
        "promotion took {:?}; writes back {gap:?} after the kill",
        promotion.took
    );

    // Every acknowledged post is on the new primary, and on the replica that follows it.
    let mut new_primary = s.admin(&promotion.primary).await;
    let ids = post_ids(&mut new_primary).await;
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged post {id} was lost");
    }
    let follower = promotion.followers[0].clone();
    let mut follower = s.admin(&follower).await;
    let master_port: u32 = sqlx::query("SHOW SLAVE STATUS")
        .fetch_one(&mut follower)
        .await
        .unwrap()
        .try_get("Master_Port")
        .unwrap();
    let new_port = s
        .config
        .replicas
        .iter()
        .find(|r| r.name == promotion.primary)
        .unwrap()
        .port;
    assert_eq!(master_port, u32::from(new_port));
    caught_up(&mut follower, &mut new_primary).await;
    assert_eq!(
        post_ids(&mut follower).await,
        post_ids(&mut new_primary).await
    );
    assert_eq!(
        global(
            &mut new_primary,
            "SELECT CAST(@@GLOBAL.read_only AS SIGNED)"
        )
        .await,
        "0"
    );
    assert_eq!(db.primary_changes(), 1);
    let stats = db.stats();
    assert_eq!(stat(&stats, &promotion.primary).role, "primary");
    assert!(stat(&stats, &promotion.primary).writable);
    assert!(!stat(&stats, &promotion.followers[0]).writable);
    db.close().await;
    s.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_promotion_that_would_lose_what_a_stuck_replica_received() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(2).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("frank", "hash", 1).await.unwrap().value;
    let (mut primary, mut replica2) = (s.admin("primary").await, s.admin("replica2").await);
    caught_up(&mut replica2, &mut primary).await;
    drop(primary);
    // replica1 receives (and acknowledges) but does not apply; replica2 gets nothing.
    let mut replica1 = s.admin("replica1").await;
    sqlx::raw_sql("STOP SLAVE SQL_THREAD")
        .execute(&mut replica1)
        .await
        .unwrap();
    sqlx::raw_sql("STOP SLAVE")
        .execute(&mut replica2)
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        acknowledged.push(
            db.create_post(user.id, "only replica1 has it", i)
                .await
                .unwrap()
                .value
                .id,
        );
    }
    s.managed.primary().kill().await;
    until_dead(&s.topology()).await;

    let topology = Topology {
        catch_up_timeout: Duration::from_secs(1),
        ..s.topology()
    };
    let err = failover::promote(&topology, "primary")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("replica1") && err.contains("would lose them"),
        "{err}"
    );
    assert!(err.contains("START SLAVE SQL_THREAD"), "{err}");
    // Nothing was promoted.
    assert_eq!(
        global(&mut replica2, "SELECT CAST(@@GLOBAL.read_only AS SIGNED)").await,
        "1"
    );

    // Once replica1 applies again, it is the one promoted, with every acknowledged post.
    sqlx::raw_sql("START SLAVE SQL_THREAD")
        .execute(&mut replica1)
        .await
        .unwrap();
    let promotion = failover::promote(&s.topology(), "primary").await.unwrap();
    assert_eq!(promotion.primary, "replica1");
    let ids = post_ids(&mut replica1).await;
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged post {id} was lost");
    }
    caught_up(&mut replica2, &mut replica1).await;
    assert_eq!(post_ids(&mut replica2).await, ids);
    db.close().await;
    s.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_returning_old_primary_is_fenced_and_rejoins_as_a_replica() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(1).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("carol", "hash", 1).await.unwrap().value;
    db.create_post(user.id, "before", 2).await.unwrap();
    kill_and_promote(&mut s, &db).await;
    db.create_post(user.id, "on the new primary", 3)
        .await
        .unwrap();

    // The old primary comes back as it was: writable, replicating from nobody. The
    // application keeps writing to the new primary, never to it.
    s.managed.primary().restart().await.unwrap();
    let old_writes = stat(&db.stats(), "primary").writes;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..5 {
        db.create_post(user.id, &format!("while the old one is back {i}"), 4)
            .await
            .unwrap();
    }
    assert_eq!(db.primary().as_deref(), Some("replica1"));
    assert_eq!(stat(&db.stats(), "primary").writes, old_writes);
    // Status says what it is, and reads stay off it.
    eventually(5, "the returned old primary is reported", || {
        let stats = db.stats();
        let old = stat(&stats, "primary");
        !old.usable
            && old
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("writable and replicating from nobody"))
    })
    .await;

    // An application server starting now, from the site file that still names the old
    // primary, refuses to pick one of two writable servers.
    let err = Db::open(&Config::Mysql(s.config.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than one server is writable") && err.contains("fence"),
        "{err}"
    );

    failover::rejoin(&s.topology(), "primary", "replica1")
        .await
        .unwrap();
    // Once the old primary is a replica, it finds the new primary by itself.
    let late = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    assert_eq!(late.primary().as_deref(), Some("replica1"));
    late.create_post(user.id, "from a late app server", 5)
        .await
        .unwrap();
    assert_eq!(stat(&late.stats(), "replica1").writes, 1);
    late.close().await;
    let mut old = s.admin("primary").await;
    assert_eq!(
        global(&mut old, "SELECT CAST(@@GLOBAL.read_only AS SIGNED)").await,
        "1"
    );
    let status = sqlx::query("SHOW SLAVE STATUS")
        .fetch_one(&mut old)
        .await
        .unwrap();
    let port: u32 = status.try_get("Master_Port").unwrap();
    assert_eq!(port, u32::from(s.config.replicas[0].port));
    let mut new_primary = s.admin("replica1").await;
    caught_up(&mut old, &mut new_primary).await;
    assert_eq!(post_ids(&mut old).await, post_ids(&mut new_primary).await);

    // The application's user cannot write there, and the Db reads from it as a replica.
    let mut app_conn = MySqlConnection::connect(&format!(
        "mysql://foobar:s3cret%27pw@127.0.0.1:{}/foobar",
        s.config.primary.port
    ))
    .await
    .unwrap();
    let refused =
        sqlx::query("INSERT INTO users (username, password_hash, created_at) VALUES ('x', 'h', 1)")
            .execute(&mut app_conn)
            .await
            .unwrap_err();
    assert!(
        refused.to_string().contains("read-only") || refused.to_string().contains("read_only"),
        "{refused}"
    );
    eventually(5, "the old primary serves reads as a replica", || {
        let stats = db.stats();
        let old = stat(&stats, "primary");
        old.role == "replica" && old.usable
    })
    .await;
    db.close().await;
    drop((old, new_primary, app_conn));

    // Started again from a site file that still names the old primary, the managed
    // servers refuse rather than set a replica up as the primary.
    let spec = Spec {
        dir: s._dir.path().to_path_buf(),
        primary: s.config.primary.clone(),
        replicas: s.config.replicas.clone(),
    };
    let Site { managed, _dir, .. } = s;
    managed.stop().await;
    let err = Managed::start(&spec)
        .await
        .err()
        .expect("refused")
        .to_string();
    let new_address = spec.replicas[0].address();
    assert!(
        err.contains(&format!("replicates from {new_address}")) && err.contains("failover"),
        "{err}"
    );
    assert!(err.contains("as `primary` in the site file"), "{err}");
    drop(_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_with_an_errant_transaction_is_kept_out() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(1).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("dave", "hash", 1).await.unwrap().value;
    db.create_post(user.id, "replicated", 2).await.unwrap();
    kill_and_promote(&mut s, &db).await;
    db.create_post(user.id, "on the new primary", 3)
        .await
        .unwrap();

    // Writes cannot be sent to a server that is no primary.
    let refused = db.use_primary("primary").await.unwrap_err().to_string();
    assert!(refused.contains("cannot take writes"), "{refused}");
    db.use_primary("replica1").await.unwrap();
    assert_eq!(db.primary().as_deref(), Some("replica1"));

    // The old primary returns and takes a write nobody else has.
    s.managed.primary().restart().await.unwrap();
    let mut old = s.admin("primary").await;
    sqlx::query("INSERT INTO foobar.posts (user_id, body, created_at) VALUES (?, 'errant', 9)")
        .bind(user.id)
        .execute(&mut old)
        .await
        .unwrap();

    let err = failover::rejoin(&s.topology(), "primary", "replica1")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("errant GTIDs 0-1-"), "{err}");
    assert!(err.contains("kept out") && err.contains("rebuild"), "{err}");
    // Fenced, and not replicating: nothing was merged either way.
    assert_eq!(
        global(&mut old, "SELECT CAST(@@GLOBAL.read_only AS SIGNED)").await,
        "1"
    );
    assert!(sqlx::query("SHOW SLAVE STATUS")
        .fetch_optional(&mut old)
        .await
        .unwrap()
        .is_none());
    let mut new_primary = s.admin("replica1").await;
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM foobar.posts")
        .fetch_all(&mut new_primary)
        .await
        .unwrap();
    assert!(!bodies.iter().any(|b| b == "errant"), "{bodies:?}");
    db.close().await;
    s.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_fails_no_read_and_loses_no_write() {
    if !mariadb_available() {
        return;
    }
    let mut s = site(1).await;
    let db = Db::open(&Config::Mysql(s.config.clone())).await.unwrap();
    let user = db.create_user("erin", "hash", 1).await.unwrap().value;
    // The replica has the schema the migrations just made before reads start.
    let (mut primary, mut replica) = (s.admin("primary").await, s.admin("replica1").await);
    caught_up(&mut replica, &mut primary).await;
    drop((primary, replica));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(db.clone(), user.id, stop.clone());
    let reading = reader(db.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let promotion = failover::switchover(&s.topology(), None).await.unwrap();
    assert_eq!(
        (promotion.primary.as_str(), promotion.previous.as_str()),
        ("replica1", "primary")
    );
    assert_eq!(promotion.followers, vec!["primary".to_string()]);
    eventually(5, "the Db writes to the new primary", || {
        db.primary().as_deref() == Some("replica1")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let Writes {
        acknowledged,
        failed: failed_writes,
        slowest,
    } = writing.await.unwrap();
    let (reads, failed_reads) = reading.await.unwrap();
    eprintln!(
        "switchover took {:?}; {reads} reads, {} writes, the slowest {slowest:?}",
        promotion.took,
        acknowledged.len()
    );
    assert!(failed_reads.is_empty(), "reads failed: {failed_reads:?}");
    assert!(reads > 50, "{reads} reads");
    // Writes pause while the old primary is read-only (the target: under a
    // second), and none fails.
    assert_eq!(failed_writes, 0);
    assert!(
        slowest < Duration::from_secs(1),
        "a write paused {slowest:?}"
    );
    assert!(stat(&db.stats(), "replica1").writes > 0);

    let mut new_primary = s.admin("replica1").await;
    let ids = post_ids(&mut new_primary).await;
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged post {id} was lost");
    }
    let mut old = s.admin("primary").await;
    caught_up(&mut old, &mut new_primary).await;
    assert_eq!(post_ids(&mut old).await, ids);
    assert_eq!(
        global(&mut old, "SELECT CAST(@@GLOBAL.read_only AS SIGNED)").await,
        "1"
    );
    db.close().await;
    s.managed.stop().await;
}
