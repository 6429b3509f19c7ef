//! `scaleup upgrade NODE` and `scaleup roll TIER`: new processes for running nodes,
//! without dropping a connection.
//!
//! An upgrade is asked of the node itself (`POST /upgrade` with the admin token), the
//! only one that knows how it was started: it starts the binary now on disk with its
//! own site file, and that process takes its listening sockets over
//! (`net::handover`). This works the same under `scaleup up` (whose supervisor
//! follows the node to its new process) and under systemd (the new process becomes
//! the unit's main process). The command returns once the new process serves and,
//! when the node runs on this machine, the old one has finished and exited.
//!
//! A roll upgrades a tier one node at a time. A web or application server is first
//! drained (no new request goes to it, those in flight finish), then upgraded, then
//! put back with its pools' slow start once healthy; load balancers need no drain
//! (the active one hands the floating address to its peer as it stops), the passive
//! one goes first.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use site::{Role, Site};

use crate::SiteArgs;

/// How often the new and old processes are looked at.
const POLL: Duration = Duration::from_millis(50);

/// What one upgrade did.
struct Upgraded {
    old: u32,
    new: u32,
    /// From the request to the new process answering healthy.
    serving: Duration,
    /// From the request to the old process's exit, when it could be watched (on this
    /// machine).
    exited: Option<Duration>,
}

/// `scaleup upgrade NODE`.
pub fn upgrade(args: &SiteArgs, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let token = crate::admin::token(&site)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let done = upgrade_node(&site, name, &token, timeout).await?;
            report(name, &done);
            Ok(())
        })
}

fn report(name: &str, done: &Upgraded) {
    let exited = match done.exited {
        Some(at) => format!(
            "; pid {} finished its connections and exited after {:.1} s",
            done.old,
            at.as_secs_f64()
        ),
        None => format!(
            "; pid {} finishes its open connections, then exits",
            done.old
        ),
    };
    println!(
        "{name}: upgraded: pid {} -> {}, serving after {} ms{exited}",
        done.old,
        done.new,
        done.serving.as_millis()
    );
}

/// Asks node `name` to start its successor, waits until the successor answers healthy
/// on the admin address, then (for a node on this machine) until the old process is
/// gone.
async fn upgrade_node(
    site: &Site,
    name: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<Upgraded> {
    let (_, node) = site.node(name).ok_or_else(|| {
        let names: Vec<&str> = site.nodes().map(|(_, n)| n.name.as_str()).collect();
        anyhow::anyhow!(
            "there is no node called `{name}`; the site's nodes are: {}",
            names.join(", ")
        )
    })?;
    let admin = node.admin;
    let started = Instant::now();
    let (status, body) = crate::admin::post(admin, "/upgrade", token).await?;
    anyhow::ensure!(
        status == 202,
        "{name} did not start an upgrade ({status}): {}",
        body.trim()
    );
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let pid = |key: &str| answer[key].as_u64().map(|p| p as u32);
    let (Some(old), Some(new)) = (pid("predecessor"), pid("successor")) else {
        anyhow::bail!("{name} answered the upgrade with no pids: {body}");
    };
    let deadline = started + timeout;
    let mut last;
    loop {
        match healthy_answer(admin).await {
            Ok(pid) if pid == new => break,
            Ok(pid) => last = format!("pid {pid} answers"),
            Err(e) => last = format!("{e:#}"),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}'s new process (pid {new}) did not serve within {timeout:?} (last: {last}); \
             the old one (pid {old}) goes on serving; the node's log says why"
        );
        tokio::time::sleep(POLL).await;
    }
    let serving = started.elapsed();
    let exited = match on_this_machine(admin) {
        true => {
            while alive(old) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{name}'s new process (pid {new}) serves, but the old one (pid {old}) has \
                     not exited within {timeout:?}: connections that outlive the drain \
                     timeout keep it (see `timeouts` in the site file)"
                );
                tokio::time::sleep(POLL).await;
            }
            Some(started.elapsed())
        }
        false => None,
    };
    Ok(Upgraded {
        old,
        new,
        serving,
        exited,
    })
}

/// The pid of the process that answers `/status` on `admin`, if `/healthz` says it is
/// healthy right after.
async fn healthy_answer(admin: SocketAddr) -> anyhow::Result<u32> {
    let limit = Duration::from_secs(1);
    let (_, status) = crate::probe::get(admin, "/status", limit).await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let pid = status["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("its /status names no pid"))? as u32;
    match crate::probe::get(admin, "/healthz", limit).await? {
        (200, _) => Ok(pid),
        (code, body) => anyhow::bail!("pid {pid} answers {code}: {}", body.trim()),
    }
}

/// Whether the node's admin address is on this machine, where its processes can be
/// watched.
fn on_this_machine(admin: SocketAddr) -> bool {
    admin.ip().is_loopback() || std::net::TcpListener::bind((admin.ip(), 0)).is_ok()
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// `scaleup roll TIER`.
pub fn roll(args: &SiteArgs, tier: &str, timeout: Duration) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let role = match tier {
        "web" => Role::Web,
        "app" => Role::App,
        "lb" => Role::Lb,
        other => anyhow::bail!("there is no tier `{other}`: roll web, app or lb"),
    };
    let token = crate::admin::token(&site)?;
    let mut nodes: Vec<String> = site
        .nodes()
        .filter(|(r, _)| *r == role)
        .map(|(_, n)| n.name.clone())
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "the site has no {tier} node");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            if role == Role::Lb {
                // The passive one first: the active one moves the address only once.
                let mut active = Vec::new();
                for name in &nodes {
                    active.push(is_active(&site, name).await);
                }
                let mut ordered: Vec<(bool, String)> = active.into_iter().zip(nodes).collect();
                ordered.sort_by_key(|(active, _)| *active);
                nodes = ordered.into_iter().map(|(_, n)| n).collect();
            }
            // With one node in the tier there is nothing to drain it to: the handover
            // alone keeps its connections.
            let drain = role != Role::Lb && nodes.len() > 1;
            if !drain && role != Role::Lb {
                println!("{tier}: one node, so it is upgraded in place without a drain");
            }
            let started = Instant::now();
            for name in &nodes {
                if drain {
                    crate::admin::drain_server(&site, name, &token, timeout).await?;
                }
                let done = upgrade_node(&site, name, &token, timeout).await;
                if let Ok(done) = &done {
                    report(name, done);
                }
                if drain {
                    // Back in the pools whatever happened: a failed upgrade leaves the
                    // old process serving, and it must not stay drained.
                    crate::admin::ready_server(&site, name, &token).await?;
                }
                done.map_err(|e| {
                    e.context(format!(
                        "the roll of {tier} stopped at {name}; the nodes before it are upgraded"
                    ))
                })?;
            }
            println!(
                "{tier}: {} node(s) upgraded one at a time in {:.1} s",
                nodes.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        })
}

/// Whether load balancer `name` holds the floating address now.
async fn is_active(site: &Site, name: &str) -> bool {
    let Some((_, node)) = site.node(name) else {
        return false;
    };
    match crate::probe::get(node.admin, "/status", Duration::from_secs(1)).await {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|s| s["cluster"]["role"] == "active"),
        _ => false,
    }
}
