//! The MySQL/MariaDB backend against real MariaDB servers: a primary and a replica started
//! by `db::managed` on free loopback ports, with their data in a temporary directory.
//!
//! These tests need `mariadbd` (Debian's `mariadb-server`, which `scripts/install-test-deps`
//! installs). Under `CI=true` a missing server fails the test; elsewhere it is skipped
//! with a loud message.

mod common;

use std::time::{Duration, Instant};

use common::*;
use db::managed::{Managed, Spec};
use db::{Config, Db, DbError, MysqlConfig, Server, ServerStats};
use sqlx::Connection;

/// A running primary + replica in a temporary directory. Field order matters: the servers
/// are killed (dropped) before the directory is removed.
struct Pair {
    managed: Managed,
    config: MysqlConfig,
    _dir: tempfile::TempDir,
}

async fn pair(max_lag: Duration) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        dir: dir.path().to_path_buf(),
        primary: server("primary", free_port()),
        replicas: vec![server("replica1", free_port())],
    };
    let managed = Managed::start(&spec).await.expect("start MariaDB pair");
    Pair {
        managed,
        config: MysqlConfig {
            primary: spec.primary,
            replicas: spec.replicas,
            max_replica_lag: max_lag,
            read_your_writes_timeout: Duration::from_millis(200),
        },
        _dir: dir,
    }
}

fn stat<'a>(stats: &'a [ServerStats], name: &str) -> &'a ServerStats {
    stats.iter().find(|s| s.name == name).unwrap()
}

/// The replica's own count of SELECT statements, read over its admin socket.
async fn com_select(managed: &mut Managed) -> u64 {
    let mut conn = managed.replica(0).admin().await.unwrap();
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    value.parse().unwrap()
}

async fn replica_sql(managed: &mut Managed, sql: &str) {
    let mut conn = managed.replica(0).admin().await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

/// Polls `check` until it holds, for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_serves_reads_and_read_your_writes_falls_back_under_lag() {
    if !mariadb_available() {
        return;
    }
    // A generous lag limit: the test stops the SQL thread and reads within it.
    let mut p = pair(Duration::from_secs(5)).await;
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();

    // Replication: a write on the primary appears on the replica, and timeline reads are
    // answered there (the replica's own Com_select counter proves it).
    let alice = db.create_user("alice", "hash", 10).await.unwrap();
    let post = db
        .create_post(alice.value.id, "hello from the primary", 11)
        .await
        .unwrap();
    assert!(
        post.position.encode().starts_with('g'),
        "{:?}",
        post.position
    );
    let before = com_select(&mut p.managed).await;
    let timeline = db.timeline(None, 10, Some(&post.position)).await.unwrap();
    assert_eq!(timeline[0].body, "hello from the primary");
    let after = com_select(&mut p.managed).await;
    // One SELECT for the GTID wait, one for the timeline, one for our own SHOW STATUS.
    assert!(
        after >= before + 2,
        "replica Com_select {before} -> {after}"
    );
    let stats = db.stats();
    assert_eq!(stat(&stats, "replica1").reads, 1);
    assert_eq!(stat(&stats, "primary").reads, 0);
    assert_eq!(stat(&stats, "primary").writes, 2);
    assert!(stat(&stats, "replica1").usable);

    // Lag: the replica stops applying. Alice's own new post is not there, so her read
    // waits briefly and goes to the primary; Bob (no write of his own) still reads the
    // replica.
    replica_sql(&mut p.managed, "STOP SLAVE SQL_THREAD").await;
    let bob = db.create_user("bob", "hash", 12).await.unwrap();
    let _ = bob;
    let mine = db
        .create_post(alice.value.id, "written while the replica lags", 13)
        .await
        .unwrap();
    let seen = db.timeline(None, 10, Some(&mine.position)).await.unwrap();
    assert_eq!(seen[0].body, "written while the replica lags");
    let stats = db.stats();
    assert_eq!(stat(&stats, "replica1").fallbacks, 1);
    assert_eq!(stat(&stats, "primary").reads, 1);

    let replica_reads = stat(&stats, "replica1").reads;
    let bobs = db.timeline(None, 10, None).await.unwrap();
    assert_eq!(
        bobs[0].body, "hello from the primary",
        "bob reads the lagging replica"
    );
    assert_eq!(stat(&db.stats(), "replica1").reads, replica_reads + 1);

    // The replica applies again: Alice's reads go to it once more, without fallback.
    replica_sql(&mut p.managed, "START SLAVE SQL_THREAD").await;
    let seen = db.timeline(None, 10, Some(&mine.position)).await.unwrap();
    assert_eq!(seen[0].body, "written while the replica lags");
    let stats = db.stats();
    assert_eq!(stat(&stats, "replica1").fallbacks, 1);
    assert_eq!(stat(&stats, "replica1").reads, replica_reads + 2);

    // Stopped long enough, the replica counts as lagging and reads go to the primary.
    let mut short = p.config.clone();
    short.max_replica_lag = Duration::from_secs(1);
    let db2 = Db::open(&Config::Mysql(short)).await.unwrap();
    replica_sql(&mut p.managed, "STOP SLAVE SQL_THREAD").await;
    eventually(10, "the stopped replica counts as lagging", || {
        !stat(&db2.stats(), "replica1").usable
    })
    .await;
    db2.timeline(None, 10, None).await.unwrap();
    assert_eq!(stat(&db2.stats(), "primary").reads, 1);
    assert!(stat(&db2.stats(), "replica1")
        .problem
        .as_deref()
        .unwrap()
        .contains("SQL thread stopped"));
    replica_sql(&mut p.managed, "START SLAVE SQL_THREAD").await;
    eventually(10, "the replica is usable again", || {
        stat(&db2.stats(), "replica1").usable
    })
    .await;

    db.close().await;
    db2.close().await;
    p.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_schema_serves_no_reads_until_it_has_it() {
    if !mariadb_available() {
        return;
    }
    // A replica that is replicating and not behind in seconds, but has not yet applied
    // the migrations: its SQL thread waits on a global read lock held here.
    let mut p = pair(Duration::from_secs(60)).await;
    let mut lock = p.managed.replica(0).admin().await.unwrap();
    sqlx::raw_sql("FLUSH TABLES WITH READ LOCK")
        .execute(&mut lock)
        .await
        .unwrap();
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();
    let stats = db.stats();
    assert!(!stat(&stats, "replica1").usable, "{stats:?}");
    assert!(
        stat(&stats, "replica1")
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("has not yet applied the schema")),
        "{stats:?}"
    );
    // Reads go to the primary instead of failing on a missing table.
    let alice = db.create_user("alice", "hash", 10).await.unwrap();
    let post = db
        .create_post(alice.value.id, "before the replica has the tables", 11)
        .await
        .unwrap();
    let timeline = db.timeline(None, 10, None).await.unwrap();
    assert_eq!(timeline[0].body, "before the replica has the tables");
    assert_eq!(stat(&db.stats(), "replica1").reads, 0);

    // The lock goes: the replica applies the schema and the writes, and reads use it.
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut lock)
        .await
        .unwrap();
    eventually(10, "the replica has the schema", || {
        stat(&db.stats(), "replica1").usable
    })
    .await;
    // (After the post: the replica may have the schema and not yet the post.)
    let timeline = db.timeline(None, 10, Some(&post.position)).await.unwrap();
    assert_eq!(timeline.len(), 1);
    assert_eq!(stat(&db.stats(), "replica1").reads, 1);

    lock.close().await.unwrap();
    db.close().await;
    p.managed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_dead_replica_and_a_dead_primary() {
    if !mariadb_available() {
        return;
    }
    let mut p = pair(Duration::from_secs(1)).await;
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();
    let user = db.create_user("carol", "hash", 10).await.unwrap().value;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let post = db
            .create_post(user.id, &format!("post {i}"), 20 + i)
            .await
            .unwrap();
        acknowledged.push(post.value.id);
    }

    // The replica dies: reads go on from the primary.
    p.managed.replica(0).kill().await;
    let posts = db.timeline(None, 50, None).await.unwrap();
    assert_eq!(posts.len(), 20);
    eventually(5, "the dead replica is out", || {
        !stat(&db.stats(), "replica1").healthy
    })
    .await;
    let primary_reads = stat(&db.stats(), "primary").reads;
    db.timeline(None, 50, None).await.unwrap();
    assert_eq!(stat(&db.stats(), "primary").reads, primary_reads + 1);

    // It returns and catches up; then the primary dies.
    p.managed.replica(0).restart().await.unwrap();
    eventually(15, "the replica is back", || {
        stat(&db.stats(), "replica1").usable
    })
    .await;
    // Replication is asynchronous: "usable" means at most `max_replica_lag` behind, not
    // caught up. Wait until the replica has every acknowledged post before the primary
    // dies, or the check below would race the replica's apply thread.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let posts = db.timeline(None, 50, None).await.unwrap();
        if acknowledged
            .iter()
            .all(|id| posts.iter().any(|p| p.id == *id))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_kill = acknowledged.len();
    p.managed.primary().kill().await;
    // Writes fail as unavailable (the application's 503) ...
    let err = loop {
        match db
            .create_post(user.id, "while the primary is dead", 99)
            .await
        {
            Err(e) => break e,
            // A write racing the kill may still land; it is acknowledged then.
            Ok(post) => acknowledged.push(post.value.id),
        }
    };
    assert!(matches!(err, DbError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("primary"), "{err}");
    // ... and reads keep working from the replica, with every acknowledged post.
    eventually(5, "the dead primary is noticed", || {
        !stat(&db.stats(), "primary").healthy
    })
    .await;
    // Every post acknowledged before the kill is readable from the replica; one that
    // raced the kill may not have reached it yet, and is checked once the primary is
    // back.
    let posts = db.timeline(None, 50, None).await.unwrap();
    let ids: Vec<i64> = posts.iter().map(|p| p.id).collect();
    for id in &acknowledged[..before_kill] {
        assert!(ids.contains(id), "acknowledged post {id} is missing");
    }
    db.ping()
        .await
        .expect("the app stays healthy on its replica");

    // The primary returns: writes work again with the same handle.
    p.managed.primary().restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match db.create_post(user.id, "after the restart", 100).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let posts = db.timeline(None, 50, None).await.unwrap();
    for id in &acknowledged {
        assert!(posts.iter().any(|p| p.id == *id), "post {id} lost");
    }
    db.close().await;
    p.managed.stop().await;
}

/// Every pooled connection busy (writes held up by a table lock, as by a long
/// transaction or a slow migration) is a busy server, not a dead one: the monitor checks
/// on a connection of its own, so the primary stays up and every held write completes
/// once the lock goes. Checked through the pool, the monitor waited behind the writes for
/// its check timeout and marked the primary down, and every other write failed with 503;
/// a write that found no free connection did the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_is_a_busy_server_not_a_dead_one() {
    if !mariadb_available() {
        return;
    }
    let mut p = pair(Duration::from_secs(5)).await;
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();
    let user = db.create_user("dave", "hash", 10).await.unwrap().value;
    let mut lock = p.managed.primary().admin().await.unwrap();
    sqlx::raw_sql("LOCK TABLES foobar.posts WRITE")
        .execute(&mut lock)
        .await
        .unwrap();
    let held: Vec<_> = (0..db::MAX_CONNECTIONS as i64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.create_post(user.id, &format!("held {i}"), 20 + i).await })
        })
        .collect();
    // Longer than a check may take, several monitor rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        held.iter().all(|w| !w.is_finished()),
        "the table lock holds the writes"
    );
    let primary = stat(&db.stats(), "primary").clone();
    assert!(
        primary.healthy,
        "a busy primary counts as down: {primary:?}"
    );
    // One write more finds no free connection: that visitor gets "unavailable" (503)
    // after the pool's wait, and the primary stays up for everyone else.
    let err = db
        .create_post(user.id, "one too many", 99)
        .await
        .expect_err("no connection comes free while the lock holds");
    assert!(matches!(err, DbError::Unavailable { .. }), "{err}");
    let primary = stat(&db.stats(), "primary").clone();
    assert!(
        primary.healthy,
        "a busy pool marked the primary down: {primary:?}"
    );
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut lock)
        .await
        .unwrap();
    for write in held {
        write.await.unwrap().expect("a held write completes");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_server_and_what_to_do() {
    if !mariadb_available() {
        return;
    }
    let mut p = pair(Duration::from_secs(1)).await;

    // Nothing listens on the primary's address.
    let mut unreachable = p.config.clone();
    unreachable.primary.port = free_port();
    let err = Db::open(&Config::Mysql(unreachable)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("primary") && text.contains("does not answer"),
        "{text}"
    );
    assert!(text.contains("start it"), "{text}");

    // A wrong password.
    let mut wrong = p.config.clone();
    wrong.primary.password = "not the password".into();
    let text = Db::open(&Config::Mysql(wrong))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("primary") && text.contains("refused user `foobar`"),
        "{text}"
    );
    assert!(text.contains("check the password"), "{text}");

    // A "replica" that replicates from nobody: the primary itself, listed as a replica.
    let mut not_replica = p.config.clone();
    not_replica.replicas[0] = Server {
        name: "replica1".into(),
        ..p.config.primary.clone()
    };
    let text = Db::open(&Config::Mysql(not_replica))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("replica1") && text.contains("not a replica"),
        "{text}"
    );
    assert!(text.contains("CHANGE MASTER TO"), "{text}");

    // A replica whose replication broke after setup is reported, and skipped.
    replica_sql(&mut p.managed, "STOP SLAVE").await;
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();
    eventually(10, "the broken replica is skipped", || {
        !stat(&db.stats(), "replica1").usable
    })
    .await;
    db.close().await;

    // Data survives a restart of the managed servers.
    let db = Db::open(&Config::Mysql(p.config.clone())).await.unwrap();
    db.create_user("dave", "hash", 1).await.unwrap();
    db.close().await;
    let spec = Spec {
        dir: p._dir.path().to_path_buf(),
        primary: p.config.primary.clone(),
        replicas: p.config.replicas.clone(),
    };
    let Pair {
        managed,
        config,
        _dir,
    } = p;
    managed.stop().await;
    let managed = Managed::start(&spec).await.unwrap();
    let db = Db::open(&Config::Mysql(config)).await.unwrap();
    assert!(db.user_by_name("dave", None).await.unwrap().is_some());
    db.close().await;
    managed.stop().await;
    drop(_dir);
}
