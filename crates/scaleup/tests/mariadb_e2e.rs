//! The database tier end to end: `scaleup up` on a site with `managed = true` starts a
//! MariaDB primary and replica, the application reads from the replica and writes to the
//! primary, a dead primary (with `failover = "manual"`) turns writes into a clear 503
//! while reads go on, and the data survives a restart of `scaleup up`. Needs `mariadbd` (see `common::mariadb_available`).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn up(site: &std::path::Path) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("up")
        .arg("--site")
        .arg(site)
        .env("SCALEUP_TEST_DB_PASSWORD", "test-pw");
    let up = Proc::spawn_graceful("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(120));
    up
}

/// `scaleup_db_reads_total` of `server` on the app's admin `/metrics`.
async fn reads_of(client: &reqwest::Client, admin: &str, server: &str) -> u64 {
    let metrics = page(client, &format!("{admin}/metrics")).await;
    let prefix = format!("scaleup_db_reads_total{{node=\"app1\",server=\"{server}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_mariadb_reads_from_the_replica_survives_a_dead_primary_and_a_restart() {
    if !mariadb_available() {
        return;
    }
    let base = free_base(DEFAULT_SITE_PORTS + 2);
    let state = tempfile::tempdir().unwrap();
    let site = write_mariadb_site(base, state.path());
    // What a dead primary does without automatic failover (`db_failover.rs` has it on).
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(&site, format!("{text}failover = \"manual\"\n")).unwrap();
    let mut up1 = up(&site);

    // The site's floating HTTPS address (cookies are `Secure`), and app1's admin
    // listener.
    let lb1 = https_site(base);
    let admin = format!("http://127.0.0.1:{}", base + 14);
    let client = https_client(state.path())
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = api_token(&client, &lb1, "alice").await;
    let resp = client
        .post(format!("{lb1}/api/posts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"body": "stored on the primary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Timeline reads (another visitor: no cookies) are answered by the replica once it
    // has the schema and the post: replication applies them a moment after the primary
    // acknowledged them (10 s at most here).
    let reader = https_client(state.path()).build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = json_of(&reader, &format!("{admin}/status")).await;
        let usable = status["database"]["servers"][1]["usable"] == true;
        let timeline = page(&reader, &format!("{lb1}/api/timeline")).await;
        if usable && timeline.contains("stored on the primary") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica is not usable or lacks the post after 10 s: {status}\n{timeline}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = reads_of(&reader, &admin, "replica1").await;
    for _ in 0..5 {
        let timeline = page(&reader, &format!("{lb1}/api/timeline")).await;
        assert!(timeline.contains("stored on the primary"), "{timeline}");
    }
    assert!(reads_of(&reader, &admin, "replica1").await >= before + 5);
    let status = json_of(&reader, &format!("{admin}/status")).await;
    let servers = status["database"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{status}");
    assert_eq!(servers[1]["name"], "replica1");
    assert_eq!(servers[1]["healthy"], true);

    // The primary dies: writes answer 503 with the clear message, reads go on.
    let pid_file = state.path().join("mariadb/primary/mariadbd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let resp = client
        .post(format!("{lb1}/api/posts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"body": "while the primary is dead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("database is unavailable"), "{body}");
    let timeline = reader
        .get(format!("{lb1}/api/timeline"))
        .send()
        .await
        .unwrap();
    assert_eq!(timeline.status(), 200);
    assert!(timeline
        .text()
        .await
        .unwrap()
        .contains("stored on the primary"));

    // Ctrl-C stops the nodes, then the (remaining) database servers.
    up1.signal(Signal::SIGINT);
    up1.wait_for_line("stopped  MariaDB", Duration::from_secs(60));
    assert_eq!(up1.wait_exit(Duration::from_secs(30)), Some(0));
    drop(up1);

    // Up again on the same state: the data is there and writes work.
    let mut up2 = up(&site);
    let timeline = page(&reader, &format!("{lb1}/api/timeline")).await;
    assert!(timeline.contains("stored on the primary"), "{timeline}");
    let resp = client
        .post(format!("{lb1}/api/posts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"body": "after the restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    up2.signal(Signal::SIGINT);
    assert_eq!(up2.wait_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn a_missing_password_variable_is_named() {
    let base = free_base(DEFAULT_SITE_PORTS + 2);
    let state = tempfile::tempdir().unwrap();
    let site = write_mariadb_site(base, state.path());
    let out = scaleup()
        .arg("up")
        .arg("--site")
        .arg(&site)
        .env_remove("SCALEUP_TEST_DB_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SCALEUP_TEST_DB_PASSWORD") && stderr.contains("export"),
        "{stderr}"
    );
}
