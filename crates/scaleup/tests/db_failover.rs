//! Automatic database failover end to end: `scaleup up` with managed MariaDB (a
//! primary and a replica, semi-synchronous), a writer and a reader through the floating
//! address, and `kill -9` of the primary. The active load balancer promotes the replica,
//! the application servers follow it, writes succeed again within seconds, no read
//! fails, every acknowledged post is there afterwards, and `status`/`/metrics` say what
//! happened. The old primary, started again, is fenced at once and rejoins as a replica
//! of the new one; a planned switchover moves the primary back with no failed read.
//! Needs `mariadbd`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn up(site: &std::path::Path) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("up")
        .arg("--site")
        .arg(site)
        .env("SCALEUP_TEST_DB_PASSWORD", "test-pw")
        .env_remove("SCALEUP_ADMIN_TOKEN");
    let up = Proc::spawn_graceful("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(120));
    up
}

/// What the writer saw: each post made (its id, when it was sent), and each refusal.
#[derive(Default)]
struct Writes {
    made: Vec<(i64, Instant)>,
    refused: Vec<(u16, Instant)>,
}

/// Every post id on the timeline, newest first, page by page.
async fn all_ids(client: &reqwest::Client, site_url: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut url = format!("{site_url}/api/timeline?limit=100");
    loop {
        let page: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        let posts = page["posts"].as_array().unwrap();
        ids.extend(posts.iter().map(|p| p["id"].as_i64().unwrap()));
        match page["next_before"].as_i64() {
            Some(before) if !posts.is_empty() => {
                url = format!("{site_url}/api/timeline?limit=100&before={before}")
            }
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_promotes_the_replica_and_loses_no_acknowledged_post() {
    if !mariadb_available() {
        return;
    }
    let base = free_base(DEFAULT_SITE_PORTS + 2);
    let state = tempfile::tempdir().unwrap();
    let site = write_mariadb_site(base, state.path());
    let _up = up(&site);
    let site_url = https_site(base);
    let client = https_client(state.path())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = api_token(&client, &site_url, "mallory").await;

    // A writer and a reader, one request at a time each, bounded in count and time.
    let writes = Arc::new(Mutex::new(Writes::default()));
    let failed_reads = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let writer = {
        let (client, site_url, token, writes, stop) = (
            client.clone(),
            site_url.clone(),
            token.clone(),
            writes.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            for i in 0..3000 {
                if *stop.borrow() {
                    break;
                }
                let sent = Instant::now();
                let resp = api_post(&client, &site_url, &token, &format!("post {i}")).await;
                let status = resp.status().as_u16();
                if status == 201 {
                    let post: serde_json::Value = resp.json().await.unwrap();
                    let id = post["post"]["id"].as_i64().expect("a post id");
                    writes.lock().unwrap().made.push((id, sent));
                } else {
                    writes.lock().unwrap().refused.push((status, sent));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let reader = {
        let (client, site_url, failed_reads, stop) = (
            client.clone(),
            site_url.clone(),
            failed_reads.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..3000 {
                if *stop.borrow() {
                    break;
                }
                match client.get(format!("{site_url}/api/timeline")).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.bytes().await;
                    }
                    Ok(resp) => failed_reads.lock().unwrap().push(resp.status().to_string()),
                    Err(e) => failed_reads.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = writes.lock().unwrap().made.len();
    assert!(
        before_kill > 5,
        "the writer wrote {before_kill} posts in a second"
    );

    let pid: i32 = std::fs::read_to_string(state.path().join("mariadb/primary/mariadbd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // How it was started, to start it again later (as a returning old primary).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();

    // Writes come back once the replica is promoted: the first one sent after the kill
    // that succeeds (one sent before may still be acknowledged by the dying primary).
    let deadline = killed + Duration::from_secs(30);
    let back = loop {
        let after = writes
            .lock()
            .unwrap()
            .made
            .iter()
            .find(|(_, at)| *at > killed)
            .map(|(_, at)| *at);
        if let Some(at) = after {
            break at - killed;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send_replace(true);
    writer.await.unwrap();
    reader.await.unwrap();
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    eprintln!(
        "[failover] writes back {:.2} s after kill -9 of the primary; {} posts acknowledged, \
         {} writes refused meanwhile",
        back.as_secs_f64(),
        writes.made.len(),
        writes.refused.len()
    );
    assert!(
        back < Duration::from_secs(10),
        "writes came back only after {back:?}"
    );
    assert!(
        writes.refused.iter().all(|(status, _)| *status == 503),
        "refusals other than 503: {:?}",
        writes.refused
    );
    let failed_reads = std::mem::take(&mut *failed_reads.lock().unwrap());
    assert!(failed_reads.is_empty(), "reads failed: {failed_reads:?}");

    // Every acknowledged post is on the new primary (reads go to it now: no replica).
    let ids: std::collections::HashSet<i64> =
        all_ids(&client, &site_url).await.into_iter().collect();
    let lost: Vec<i64> = writes
        .made
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged posts lost: {lost:?}");

    // The active load balancer says what it did.
    let lb1_admin = format!("http://127.0.0.1:{}", base + 11);
    let status = json_of(&client, &format!("{lb1_admin}/status")).await;
    let failover = &status["database_failover"];
    assert_eq!(failover["deciding"], true, "{status}");
    assert_eq!(failover["failovers"], 1, "{status}");
    assert_eq!(failover["primary"], "replica1", "{status}");
    assert_eq!(failover["last"]["from"], "primary", "{status}");
    let metrics = get_text(&format!("{lb1_admin}/metrics")).await;
    assert!(
        metrics.contains("scaleup_db_failovers_total{node=\"lb1\"} 1"),
        "{metrics}"
    );
    let out = scaleup()
        .args(["status", "--site"])
        .arg(&site)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("database failover: decided by lb1; primary replica1; 1 failover(s) (last: primary -> replica1"),
        "{said}"
    );
    // The passive one watched and did nothing.
    let status = json_of(&client, &format!("http://127.0.0.1:{}/status", base + 12)).await;
    assert_eq!(status["database_failover"]["deciding"], false, "{status}");
    assert_eq!(status["database_failover"]["failovers"], 0, "{status}");

    // The old primary comes back, writable as it was started: the decider fences it at
    // once. It rejoins as a replica of replica1, unless it holds a transaction replica1
    // lacks: one it wrote to its binary log as it was killed, before any replica had it,
    // so never acknowledged (semi-synchronous, AFTER_SYNC). Then it is kept out and
    // reported, never merged. Which one happens depends on where the kill fell.
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut again = std::process::Command::new(&args[0]);
    again.args(&args[1..]);
    let _returned = Proc::spawn("old-primary", again);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejoined = loop {
        let status = json_of(&client, &format!("{lb1_admin}/status")).await;
        let failover = &status["database_failover"];
        if failover["rejoined"] == serde_json::json!(["primary"]) {
            break true;
        }
        if let Some(kept) = failover["kept_out"].as_array().and_then(|k| k.first()) {
            assert_eq!(kept["server"], "primary", "{failover}");
            assert!(
                kept["why"].as_str().unwrap().contains("errant GTIDs"),
                "{failover}"
            );
            break false;
        }
        assert!(
            Instant::now() < deadline,
            "the returning primary was neither rejoined nor kept out within 30 s: {failover}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "[failover] the old primary {}",
        if rejoined {
            "rejoined as a replica"
        } else {
            "held an unacknowledged transaction: kept out"
        }
    );
    let resp = api_post(&client, &site_url, &token, "after the old primary returned").await;
    assert_eq!(resp.status(), 201);
    let app_status = json_of(&client, &format!("http://127.0.0.1:{}/status", base + 14)).await;
    let servers = app_status["database"]["servers"].as_array().unwrap();
    let primaries: Vec<&str> = servers
        .iter()
        .filter(|s| s["role"] == "primary")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(primaries, ["replica1"], "{app_status}");
    if !rejoined {
        return;
    }

    // A planned switchover back to the old primary, now a replica: reads go on (none
    // fails), and writes work after it.
    let reads = {
        let (client, site_url) = (client.clone(), site_url.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..300 {
                match client.get(format!("{site_url}/api/timeline")).send().await {
                    Ok(resp) if resp.status() == 200 => {}
                    Ok(resp) => failed.push(resp.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        })
    };
    let switched = {
        let site = site.clone();
        tokio::task::spawn_blocking(move || {
            scaleup()
                .args(["db", "switchover", "primary", "--site"])
                .arg(&site)
                .env("SCALEUP_TEST_DB_PASSWORD", "test-pw")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let said = String::from_utf8_lossy(&switched.stdout);
    assert!(
        switched.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&switched.stderr)
    );
    assert!(
        said.contains("primary is the primary now (was replica1)"),
        "{said}"
    );
    let failed = reads.await.unwrap();
    assert!(
        failed.is_empty(),
        "reads failed during the switchover: {failed:?}"
    );
    let resp = api_post(&client, &site_url, &token, "after the switchover").await;
    assert_eq!(resp.status(), 201);
}
