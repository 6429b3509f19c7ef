//! `scaleup drill kill NODE`: a failover drill against a running site. It sends a
//! bounded stream of requests to the floating address, stops the active load
//! balancer (SIGKILL, or SIGTERM with `--graceful`), and reports how long requests
//! failed, how many, and who took over.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::SiteArgs;

/// Clients sending requests at once during a drill.
const CLIENTS: usize = 4;
/// At most this many requests per drill, whatever the duration.
const MAX_REQUESTS: usize = 200_000;
/// Requests before the kill, to know the site answers.
const WARM_UP: Duration = Duration::from_millis(500);

/// One request's outcome.
#[derive(Clone)]
struct Shot {
    at: Instant,
    ok: bool,
    /// Why it failed: a status, or the connection error.
    error: Option<String>,
}

pub fn drill(
    args: &SiteArgs,
    node: &str,
    graceful: bool,
    duration: Duration,
) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let cluster = site.cluster.as_ref().ok_or_else(|| {
        anyhow::anyhow!("this site has no load-balancer cluster: there is nothing to fail over")
    })?;
    let target: SocketAddr = cluster.floating.describe().parse().map_err(|_| {
        anyhow::anyhow!(
            "the drill needs a floating ip:port to send requests to (local or linux mode)"
        )
    })?;
    let victim = site
        .lb(node)
        .ok_or_else(|| anyhow::anyhow!("`{node}` is not a load balancer of this site"))?
        .node
        .clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let status = admin_status(victim.admin).await?;
        let pid = status["pid"].as_u64().ok_or_else(|| {
            anyhow::anyhow!("{node} did not report its pid on {}/status", victim.admin)
        })?;
        let role = status["cluster"]["role"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        if role != "active" {
            println!("note: {node} is {role}; stopping it should not move the address");
        }

        let shots = Arc::new(Mutex::new(Vec::with_capacity(16 * 1024)));
        let start = Instant::now();
        let deadline = start + WARM_UP + duration;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let shots = shots.clone();
            clients.push(tokio::spawn(async move {
                while Instant::now() < deadline
                    && shots.lock().expect("poisoned").len() < MAX_REQUESTS
                {
                    let error =
                        match crate::probe::get(target, "/healthz", Duration::from_millis(500))
                            .await
                        {
                            Ok((200, _)) => None,
                            Ok((status, _)) => Some(format!("status {status}")),
                            Err(e) => Some(format!("{e:#}")),
                        };
                    let ok = error.is_none();
                    shots.lock().expect("poisoned").push(Shot {
                        at: Instant::now(),
                        ok,
                        error,
                    });
                    if !ok {
                        // A refused connection returns at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(WARM_UP).await;
        let signal = if graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        let killed_at = Instant::now();
        kill(Pid::from_raw(pid as i32), signal)?;
        for client in clients {
            client.await?;
        }
        let shots = shots.lock().expect("poisoned").clone();
        report(node, pid, signal, &shots, killed_at, start);

        let mut taken_by = Vec::new();
        for lb in site.lbs.iter().filter(|l| l.node.name != node) {
            if let Ok(status) = admin_status(lb.node.admin).await {
                let cluster = &status["cluster"];
                if cluster["role"] == "active" {
                    let reason = cluster["transitions"]
                        .as_array()
                        .and_then(|t| t.last())
                        .and_then(|t| t["reason"].as_str())
                        .unwrap_or("")
                        .to_string();
                    taken_by.push(format!("{} ({reason})", lb.node.name));
                }
            }
        }
        match taken_by.as_slice() {
            [] => println!("  taken over by: nobody answers as active yet"),
            list => println!("  taken over by: {}", list.join(", ")),
        }
        anyhow::Ok(())
    })
}

fn report(
    node: &str,
    pid: u64,
    signal: Signal,
    shots: &[Shot],
    killed_at: Instant,
    start: Instant,
) {
    let mut shots = shots.to_vec();
    shots.sort_by_key(|s| s.at);
    let failed: Vec<&Shot> = shots.iter().filter(|s| !s.ok).collect();
    println!(
        "drill: {signal} to {node} (pid {pid}) after {:.0} ms, {CLIENTS} clients on the floating address",
        (killed_at - start).as_secs_f64() * 1e3
    );
    println!("  requests: {} sent, {} failed", shots.len(), failed.len());
    let mut kinds: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for shot in &failed {
        *kinds
            .entry(shot.error.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    for (kind, count) in kinds {
        println!("    {count} x {kind}");
    }
    let (Some(first_fail), Some(last_fail)) = (failed.first(), failed.last()) else {
        println!("  gap: none: every request was answered");
        return;
    };
    let last_ok_before = shots
        .iter()
        .rev()
        .find(|s| s.ok && s.at < first_fail.at)
        .map(|s| s.at);
    let first_ok_after = shots
        .iter()
        .find(|s| s.ok && s.at > last_fail.at)
        .map(|s| s.at);
    match (last_ok_before, first_ok_after) {
        (Some(before), Some(after)) => println!(
            "  gap: {:.1} ms without answers (last answer {:.1} ms after the signal, next {:.1} ms after it)",
            (after - before).as_secs_f64() * 1e3,
            before.saturating_duration_since(killed_at).as_secs_f64() * 1e3,
            (after - killed_at).as_secs_f64() * 1e3
        ),
        (_, None) => println!("  gap: requests were still failing when the drill ended"),
        (None, Some(after)) => println!(
            "  gap: failing from the start until {:.1} ms after the signal",
            (after - killed_at).as_secs_f64() * 1e3
        ),
    }
}

async fn admin_status(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let (status, body) = crate::probe::get(admin, "/status", Duration::from_secs(2)).await?;
    anyhow::ensure!(status == 200, "{admin}/status answered {status}");
    Ok(serde_json::from_str(&body)?)
}
