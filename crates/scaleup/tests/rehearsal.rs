//! The seeds' deployment, rehearsed: every component on a host of its own (network
//! namespaces made by this test, one bridge): a client, lb1 and lb2 (linux cluster mode,
//! a floating IP), web1, app1, and a MariaDB primary and replica on two more hosts,
//! every node started with `scaleup run` on its host. The client signs up and posts
//! through the floating IP; lb1 is killed (lb2 takes the IP); a partition between lb2
//! and the primary alone promotes nothing (the replica still receives from it); then the
//! primary's host loses its cable. lb2, now active, promotes the replica with the site's failover
//! accounts; the site keeps serving, writes come back, and nothing acknowledged is lost.
//!
//! Needs root, iproute2, curl and MariaDB (installed by scripts/install-test-deps);
//! under CI=true a missing one fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::*;
use common::{mariadb_available, Proc};
use nix::sys::signal::Signal;

const DB_PASSWORD: &str = "app-pw";
const ADMIN_PASSWORD: &str = "admin-pw";
const REPLICATION_PASSWORD: &str = "repl-pw";

/// One MariaDB server on a host of its own, killed when dropped.
struct Database {
    _proc: Proc,
    socket: PathBuf,
}

/// `name`'s path, for a command run inside a host (`ip netns exec` needs one).
fn program(name: &str) -> String {
    common::program(name).map_or_else(|| name.to_string(), |p| p.display().to_string())
}

/// Statements run as root over the server's socket (reachable from this namespace: a
/// Unix socket is a file).
fn sql(socket: &Path, statements: &str) -> String {
    let out = Command::new(program("mariadb"))
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-N", "-B", "-e", statements])
        .output()
        .expect("the mariadb client runs");
    assert!(
        out.status.success(),
        "{statements}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts MariaDB on `host` (address `NET.byte`), with a binary log, GTIDs and
/// semi-synchronous replication, as a site's own server would be set up.
fn start_database(hosts: &Hosts, dir: &Path, host: &str, byte: u8, id: u32) -> Database {
    let dir = dir.join(host);
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let install = Command::new(program("mariadb-install-db"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--user=root",
        ])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let socket = dir.join("mariadbd.sock");
    let mut cmd = hosts.command(host, &program("mariadbd"));
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
        .arg(format!("--log-error={}", dir.join("error.log").display()))
        .arg(format!("--bind-address={NET}.{byte}"))
        .arg("--port=3306")
        .arg(format!("--server-id={id}"))
        .args([
            "--log-bin=binlog",
            "--binlog-format=ROW",
            "--log-slave-updates=ON",
            "--rpl-semi-sync-master-enabled=ON",
            "--rpl-semi-sync-master-timeout=1000",
            "--rpl-semi-sync-slave-enabled=ON",
            "--slave-net-timeout=4",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--performance-schema=OFF",
            "--user=root",
        ]);
    let proc = Proc::spawn(host, cmd);
    wait_until(
        &format!("MariaDB on {host} answers"),
        Duration::from_secs(60),
        || {
            Command::new(program("mariadb"))
                .arg(format!("--socket={}", socket.display()))
                .args(["-uroot", "-e", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    Database {
        _proc: proc,
        socket,
    }
}

/// The whole site's file: every node on its own host.
fn site_file(dir: &Path) -> String {
    cluster_site(dir, false)
        + &format!(
            r#"
[[web]]
name = "web1"
listen = "{NET}.13:80"
admin = "127.0.0.1:9013"

[[app]]
name = "app1"
listen = "{NET}.14:8080"
admin = "127.0.0.1:9014"

[database]
kind = "mysql"
primary = "mysql://foobar@{NET}.21:3306/foobar"
replicas = ["mysql://foobar@{NET}.22:3306/foobar"]
password_env = "SCALEUP_TEST_DB_PASSWORD"
failover = "auto"
admin_user = "scaleup_admin"
admin_password_env = "SCALEUP_TEST_DB_ADMIN_PASSWORD"
replication_user = "repl"
replication_password_env = "SCALEUP_TEST_DB_REPLICATION_PASSWORD"
"#
        )
}

/// Signs `name` up through the floating IP; the API token.
fn sign_up(hosts: &Hosts, name: &str) -> String {
    let body = format!(r#"{{"username":"{name}","password":"a long enough passphrase"}}"#);
    let json = ["-H", "content-type: application/json", "-d", body.as_str()];
    let url = |path: &str| format!("http://{VIP}{path}");
    let (status, said) = hosts.client_http(&[&json[..], &[url("/api/signup").as_str()]].concat());
    assert_eq!(status, 201, "sign-up: {said}");
    let (status, said) = hosts.client_http(&[&json[..], &[url("/api/login").as_str()]].concat());
    assert_eq!(status, 200, "login: {said}");
    let reply: serde_json::Value = serde_json::from_str(&said).unwrap();
    reply["token"].as_str().unwrap().to_string()
}

/// Posts `text` through the floating IP: its id when acknowledged, else the status.
fn post(hosts: &Hosts, token: &str, text: &str) -> Result<i64, u16> {
    let auth = format!("authorization: Bearer {token}");
    let body = format!(r#"{{"body":"{text}"}}"#);
    let url = format!("http://{VIP}/api/posts");
    let (status, said) = hosts.client_http(&[
        // A write stuck on a silent primary is given up after 3 s (curl takes the
        // last `--max-time`), so the time writes come back is measured, not curl's.
        "--max-time",
        "3",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        "-d",
        &body,
        &url,
    ]);
    match status {
        201 => {
            let reply: serde_json::Value = serde_json::from_str(&said).unwrap();
            Ok(reply["post"]["id"].as_i64().unwrap())
        }
        other => Err(other),
    }
}

/// `/status` of the node whose admin listener is on port `admin` of `host`'s loopback
/// (`null` when it does not answer).
fn admin_status(hosts: &Hosts, host: &str, admin: u16) -> serde_json::Value {
    let out = hosts
        .command(host, "curl")
        .args(["-s", "-m", "2"])
        .arg(format!("http://127.0.0.1:{admin}/status"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Whether load balancer `lb` (admin port `admin`) has its web server up in its pool.
fn up_in_pool(hosts: &Hosts, lb: &str, admin: u16) -> bool {
    admin_status(hosts, lb, admin)["backend"]["servers"][0]["state"] == "up"
}

#[test]
fn the_seeds_deployment_survives_lb1_and_the_primary_host() {
    if !can_run() || !mariadb_available() {
        return;
    }
    let hosts = Hosts::new(&[
        ("client", 10),
        ("lb1", 11),
        ("lb2", 12),
        ("web1", 13),
        ("app1", 14),
        ("db1", 21),
        ("db2", 22),
    ]);
    let state = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("SCALEUP_TEST_SECRET", "a shared secret"),
        ("SCALEUP_TEST_DB_PASSWORD", DB_PASSWORD),
        ("SCALEUP_TEST_DB_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("SCALEUP_TEST_DB_REPLICATION_PASSWORD", REPLICATION_PASSWORD),
    ] {
        std::env::set_var(var, value);
    }

    // The database tier as its operator would set it up: users on the primary (they
    // replicate), then the replica following it by GTID.
    let db1 = start_database(&hosts, state.path(), "db1", 21, 1);
    let db2 = start_database(&hosts, state.path(), "db2", 22, 2);
    sql(
        &db1.socket,
        &format!(
            "CREATE DATABASE foobar; \
             CREATE USER 'foobar'@'%' IDENTIFIED BY '{DB_PASSWORD}'; \
             GRANT ALL ON foobar.* TO 'foobar'@'%'; \
             GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO 'foobar'@'%'; \
             CREATE USER 'scaleup_admin'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
             GRANT ALL ON *.* TO 'scaleup_admin'@'%'; \
             CREATE USER 'repl'@'%' IDENTIFIED BY '{REPLICATION_PASSWORD}'; \
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';"
        ),
    );
    sql(
        &db2.socket,
        &format!(
            "SET GLOBAL read_only = 1; \
             CHANGE MASTER TO MASTER_HOST='{NET}.21', MASTER_PORT=3306, MASTER_USER='repl', \
             MASTER_PASSWORD='{REPLICATION_PASSWORD}', MASTER_USE_GTID=slave_pos, \
             MASTER_HEARTBEAT_PERIOD=2; START SLAVE;"
        ),
    );
    wait_until("db2 replicates db1", Duration::from_secs(30), || {
        sql(
            &db2.socket,
            "SELECT COUNT(*) FROM mysql.user WHERE user = 'foobar'",
        )
        .trim()
            == "1"
    });

    let site = state.path().join("site.toml");
    std::fs::write(&site, site_file(state.path())).unwrap();
    let _app = hosts.run("app1", "app1", &site);
    let _web = hosts.run("web1", "web1", &site);
    let lb1 = hosts.run("lb1", "lb1", &site);
    // Through every tier to the database: lb1 has seen web1 up (a load balancer whose
    // web servers are all down hands the address to a healthy peer), and the
    // application server has opened its database.
    wait_until(
        "the site answers from the database",
        Duration::from_secs(60),
        || {
            hosts
                .client_http(&[&format!("http://{VIP}/api/timeline")])
                .0
                == 200
        },
    );
    // Up in lb1's pool for longer than a health check takes to mark it down (web1 may
    // have refused lb1's first check while it started).
    wait_until("lb1 sees web1 up for 2 s", Duration::from_secs(30), || {
        up_in_pool(&hosts, "lb1", 9011) && {
            std::thread::sleep(Duration::from_secs(2));
            up_in_pool(&hosts, "lb1", 9011)
        }
    });
    let _lb2 = hosts.run("lb2", "lb2", &site);
    std::thread::sleep(Duration::from_millis(500));
    assert!(hosts.holds_vip("lb1") && !hosts.holds_vip("lb2"));

    let token = sign_up(&hosts, "grace");
    let mut acknowledged = vec![post(&hosts, &token, "through lb1").expect("a post through lb1")];

    // lb1 dies: lb2 takes the floating IP, and the site goes on.
    lb1.signal(Signal::SIGKILL);
    drop(lb1);
    wait_until("lb2 takes the floating IP", Duration::from_secs(5), || {
        hosts.holds_vip("lb2")
    });
    wait_until("the client reaches lb2", Duration::from_secs(10), || {
        hosts.client_get()
    });
    acknowledged.push(post(&hosts, &token, "through lb2").expect("a post through lb2"));

    // A partition between lb2 and the primary only (a blackhole route on lb2): lb2 cannot
    // reach db1, but db2 still receives from it, so db1 is alive: no promotion, and the
    // site goes on writing to db1.
    let blackhole = format!("{NET}.21/32");
    ip(&[
        "-n",
        &hosts.ns("lb2"),
        "route",
        "add",
        "blackhole",
        &blackhole,
    ]);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(sql(&db1.socket, "SELECT @@GLOBAL.read_only").trim(), "0");
    assert_eq!(sql(&db2.socket, "SELECT @@GLOBAL.read_only").trim(), "1");
    let held = admin_status(&hosts, "lb2", 9012);
    let waiting = held["database_failover"]["waiting"]
        .as_str()
        .unwrap_or_default();
    assert!(
        waiting.contains("still receive from it"),
        "lb2 waits for the right reason: {held}"
    );
    acknowledged.push(post(&hosts, &token, "during the partition").expect("a post during it"));
    ip(&[
        "-n",
        &hosts.ns("lb2"),
        "route",
        "del",
        "blackhole",
        &blackhole,
    ]);

    // The primary's host loses its cable: lb2 (active) promotes db2 once db2 no longer
    // receives from db1 (its slave_net_timeout), and writes come back.
    hosts.cable("db1", false);
    let cut = Instant::now();
    let mut refused = 0;
    let back = loop {
        match post(&hosts, &token, "after the primary's host went dark") {
            Ok(id) => {
                acknowledged.push(id);
                break cut.elapsed();
            }
            Err(_) => refused += 1,
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "no write succeeded within 60 s of cutting db1's cable"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "[rehearsal] writes back {:.1} s after db1's cable was cut ({refused} refused meanwhile)",
        back.as_secs_f64()
    );
    assert_eq!(
        sql(&db2.socket, "SELECT @@GLOBAL.read_only").trim(),
        "0",
        "db2 is the primary now"
    );

    // Reads go on, and every acknowledged post is there.
    let (status, timeline) = hosts.client_http(&[&format!("http://{VIP}/api/timeline?limit=100")]);
    assert_eq!(status, 200, "{timeline}");
    let timeline: serde_json::Value = serde_json::from_str(&timeline).unwrap();
    let ids: Vec<i64> = timeline["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged post {id} lost: {ids:?}");
    }
    drop((db1, db2));
}
