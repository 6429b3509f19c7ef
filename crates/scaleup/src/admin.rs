//! The client side of admin writes: the token, the authenticated `POST` to a node's
//! admin listener, and `scaleup drain` / `scaleup ready`, which act on every node
//! that balances to a server (both load balancers for a web server, every web server
//! that uses an application server).
//!
//! Drained and ready states live in the balancing nodes' memory: a balancing node
//! that restarts has every server in its pool again (with a slow start), so a drain
//! is for the time of a maintenance, not a configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use site::{Role, Site};

use crate::SiteArgs;

/// Where `scaleup up` keeps the admin token it gave the nodes, in the state directory.
pub const TOKEN_FILE: &str = "admin.token";

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin token for `site`: `$admin_token_env` if set, else the file `scaleup up`
/// wrote in the state directory.
pub fn token(site: &Site) -> anyhow::Result<String> {
    let Some(var) = &site.admin_token_env else {
        anyhow::bail!(
            "the site file names no admin token, so its nodes take no admin writes: add \
             `admin_token_env = \"SCALEUP_ADMIN_TOKEN\"` to [site], export that variable on \
             every node (`scaleup up` makes one), and start the nodes again"
        );
    };
    if let Ok(Some(token)) = site.admin_token() {
        return Ok(token);
    }
    let file = token_path(site);
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        _ => anyhow::bail!(
            "no admin token: export {var}=... with the value the nodes were started with \
             (under `scaleup up` it is in {})",
            file.display()
        ),
    }
}

/// The token file of `site`'s state directory.
pub fn token_path(site: &Site) -> PathBuf {
    site.state_dir.join(TOKEN_FILE)
}

/// `POST path` on `addr` with the admin token; the status and body.
pub async fn post(addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONNECTION, "close")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(CALL_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {CALL_TIMEOUT:?}"))?
}

/// The nodes that balance to server `name`, by name and admin address: the load
/// balancers for a web server in their pool, the web servers that use an app server.
fn balancers(site: &Site, name: &str) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let (role, _) = site.node(name).ok_or_else(|| {
        let names: Vec<&str> = site
            .nodes()
            .filter(|(r, _)| *r != Role::Lb)
            .map(|(_, n)| n.name.as_str())
            .collect();
        anyhow::anyhow!(
            "there is no node called `{name}`; the servers that can be drained are: {}",
            names.join(", ")
        )
    })?;
    let list: Vec<(String, SocketAddr)> = match role {
        Role::Lb => anyhow::bail!(
            "`{name}` is a load balancer: nothing balances to it (to move the floating \
             address, stop it cleanly: the peer takes over)"
        ),
        Role::Web if site.balancer.servers.iter().any(|s| s == name) => site
            .lbs
            .iter()
            .map(|l| (l.node.name.clone(), l.node.admin))
            .collect(),
        Role::Web => Vec::new(),
        Role::App => site
            .webs
            .iter()
            .filter(|w| w.apps.iter().any(|a| a == name))
            .map(|w| (w.node.name.clone(), w.node.admin))
            .collect(),
    };
    anyhow::ensure!(
        !list.is_empty(),
        "`{name}` is in no pool of this site, so no traffic goes to it to drain"
    );
    Ok(list)
}

/// Sends `action` (`drain` or `ready`) for server `name` to every node in `to`; the
/// nodes that did it. A refused token stops everything; a node that cannot be
/// reached is reported and skipped.
async fn send(
    to: &[(String, SocketAddr)],
    name: &str,
    action: &str,
    token: &str,
    missed: &mut Vec<String>,
) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut done = Vec::new();
    for (node, admin) in to {
        match post(*admin, &format!("/servers/{name}/{action}"), token).await {
            Ok((200, _)) => done.push((node.clone(), *admin)),
            Ok((status @ (401 | 403), body)) => {
                anyhow::bail!("{node} refused the {action} ({status}): {}", body.trim())
            }
            Ok((status, body)) => missed.push(format!("{node}: {status} {}", body.trim())),
            Err(e) => missed.push(format!("{node}: {e:#}")),
        }
    }
    Ok(done)
}

/// `scaleup drain NODE`: out of every pool it is in, then wait until no balancing node
/// has a request in flight to it (or `timeout`, which is an error naming what is left).
pub fn drain(args: &SiteArgs, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let token = token(&site)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(drain_server(&site, name, &token, timeout))
}

/// [`drain`] on a loaded site, with its token.
pub async fn drain_server(
    site: &Site,
    name: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let to = balancers(site, name)?;
    {
        let started = Instant::now();
        let mut missed = Vec::new();
        let done = send(&to, name, "drain", token, &mut missed).await?;
        anyhow::ensure!(
            !done.is_empty(),
            "{name} could not be drained anywhere: {}",
            missed.join("; ")
        );
        let names = |list: &[(String, SocketAddr)]| {
            list.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{name}: drained on {}; waiting for its requests in flight to finish",
            names(&done)
        );
        let deadline = started + timeout;
        let left = loop {
            let mut left = Vec::new();
            for (node, admin) in &done {
                match crate::probe::get(*admin, &format!("/servers/{name}"), CALL_TIMEOUT).await {
                    Ok((200, body)) => {
                        let doc: serde_json::Value = serde_json::from_str(&body)?;
                        let n = doc["in_flight"].as_u64().unwrap_or(0);
                        if n > 0 {
                            left.push(format!("{node}: {n} in flight"));
                        }
                    }
                    Ok((status, body)) => left.push(format!("{node}: {status} {}", body.trim())),
                    Err(e) => left.push(format!("{node}: {e:#}")),
                }
            }
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        anyhow::ensure!(
            left.is_empty(),
            "{name} is drained but not idle after {timeout:?}: {}; run `scaleup drain {name}` \
             again to wait longer, or `scaleup ready {name}` to put it back",
            left.join("; ")
        );
        anyhow::ensure!(
            missed.is_empty(),
            "{name} is idle on {}, but not drained on: {} (a node that starts again sends \
             to it: drain again once it is back)",
            names(&done),
            missed.join("; ")
        );
        println!(
            "{name}: idle on {} after {:.1} s: no request goes to it",
            names(&done),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// `scaleup ready NODE`: back in every pool it is in, with the pools' slow start.
pub fn ready(args: &SiteArgs, name: &str) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let token = token(&site)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ready_server(&site, name, &token))
}

/// [`ready`] on a loaded site, with its token.
pub async fn ready_server(site: &Site, name: &str, token: &str) -> anyhow::Result<()> {
    let to = balancers(site, name)?;
    // The ramp is the balancing nodes' own: the balancer's for a web server, each
    // web server's for an application server (one figure when they agree).
    let mut ramps: Vec<Duration> = match site.node(name).map(|(r, _)| r) {
        Some(Role::Web) => vec![site.balancer.slowstart],
        _ => site
            .webs
            .iter()
            .filter(|w| w.apps.iter().any(|a| a == name))
            .map(|w| w.slowstart)
            .collect(),
    };
    ramps.sort();
    ramps.dedup();
    let slowstart = (ramps.len() == 1).then(|| ramps[0]);
    {
        let mut missed = Vec::new();
        let done = send(&to, name, "ready", token, &mut missed).await?;
        let list: Vec<&str> = done.iter().map(|(n, _)| n.as_str()).collect();
        let ramp = match slowstart {
            Some(d) if d.is_zero() => "its whole share at once (slowstart = 0)".to_string(),
            Some(d) => format!("its share ramps up over {}", humantime::format_duration(d)),
            None => "its share ramps up over each web server's `slowstart`".to_string(),
        };
        println!("{name}: ready on {}: {ramp}", list.join(", "));
        anyhow::ensure!(
            missed.is_empty(),
            "{name} is not ready on: {}",
            missed.join("; ")
        );
        Ok(())
    }
}
