//! `scaleup status`: asks every node of a running site how it is doing, through
//! their admin listeners, and prints one line a node (or one JSON document).

use std::time::Duration;

use crate::SiteArgs;

pub fn status(args: &SiteArgs, json: bool) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    // The file as read here, to compare with what the load balancers run (not the
    // built-in default: it is made anew, with a fresh secret, at each call).
    let local = match &args.site {
        Some(path) => Some((
            path.display().to_string(),
            cluster::wire::hex(&cluster::wire::config_hash(&std::fs::read(path)?)),
        )),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for (role, node) in site.nodes() {
            let health = crate::probe::get(node.admin, "/healthz", Duration::from_secs(2)).await;
            let status = crate::probe::get(node.admin, "/status", Duration::from_secs(2)).await;
            reports.push((role, node.clone(), health, status));
        }
        reports
    });
    let docs: Vec<(&str, Option<serde_json::Value>)> = reports
        .iter()
        .map(|(_, node, _, status)| {
            let doc = status
                .as_ref()
                .ok()
                .and_then(|(_, body)| serde_json::from_str(body).ok());
            (node.name.as_str(), doc)
        })
        .collect();
    let lbs: Vec<&str> = site.lbs.iter().map(|l| l.node.name.as_str()).collect();
    let warnings = config_warnings(&lbs, &docs, local.as_ref());

    if json {
        let nodes: Vec<serde_json::Value> = reports
            .iter()
            .map(|(role, node, health, status)| {
                serde_json::json!({
                    "node": node.name,
                    "role": role.as_str(),
                    "listen": node.listen.to_string(),
                    "admin": node.admin.to_string(),
                    "healthy": matches!(health, Ok((200, _))),
                    "status": status.as_ref().ok().and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok()),
                    "error": status.as_ref().err().map(|e| e.to_string()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "site": site.name, "nodes": nodes, "warnings": warnings })
            )?
        );
        return Ok(());
    }

    println!("{}", site.name);
    println!(
        "{:<8} {:<4} {:<22} {:<9} {:>9} {:>6}  details",
        "NODE", "ROLE", "LISTEN", "STATE", "REQUESTS", "5XX"
    );
    let mut down = 0;
    let mut failover = None;
    for (role, node, health, status) in &reports {
        let state = match health {
            Ok((200, _)) => "up",
            Ok(_) => "unhealthy",
            Err(_) => "down",
        };
        if state != "up" {
            down += 1;
        }
        let doc = status
            .as_ref()
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok());
        let requests = doc
            .as_ref()
            .map_or("-".into(), |d| d["requests"].to_string());
        let errors = doc
            .as_ref()
            .map_or("-".into(), |d| d["responses_by_class"][4].to_string());
        if failover.is_none() {
            failover = doc.as_ref().and_then(|d| failover_line(&node.name, d));
        }
        let details = doc.as_ref().map(details).unwrap_or_else(|| match status {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        });
        println!(
            "{:<8} {:<4} {:<22} {:<9} {:>9} {:>6}  {details}",
            node.name,
            role.as_str(),
            node.listen.to_string(),
            state,
            requests,
            errors
        );
    }
    if let Some(line) = failover {
        println!("{line}");
    }
    for warning in &warnings {
        println!("warning: {warning}");
    }
    if down > 0 {
        anyhow::bail!("{down} node(s) not healthy");
    }
    Ok(())
}

/// A one-line summary of a node's upstream pool (`web1 up, web2 DRAINED, web3 DOWN`)
/// or database.
fn details(doc: &serde_json::Value) -> String {
    let pool = doc.get("backend").or_else(|| doc.get("upstream"));
    if let Some(servers) = pool.and_then(|p| p["servers"].as_array()) {
        let parts: Vec<String> = servers
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap_or("?");
                match s["state"].as_str().unwrap_or("down") {
                    "up" if s["effective_weight"].as_f64() < s["weight"].as_f64() => format!(
                        "{name} up (slow start: weight {} of {})",
                        s["effective_weight"], s["weight"]
                    ),
                    "up" => format!("{name} up"),
                    "draining" => format!("{name} DRAINING ({} in flight)", s["in_flight"]),
                    "drained" => format!("{name} DRAINED"),
                    _ => format!("{name} DOWN"),
                }
            })
            .collect();
        return format!("-> {}", parts.join(", "));
    }
    if let Some(db) = doc.get("database") {
        return format!("database: {db}");
    }
    String::new()
}

/// What the load balancer `name` says of the automatic database failover, when it is
/// the one deciding (it holds the floating address).
fn failover_line(name: &str, doc: &serde_json::Value) -> Option<String> {
    let f = doc.get("database_failover")?;
    if f["deciding"] != true {
        return None;
    }
    let mut line = format!(
        "database failover: decided by {name}; primary {}; {} failover(s)",
        f["primary"].as_str().unwrap_or("?"),
        f["failovers"]
    );
    if let Some(last) = f.get("last").filter(|l| !l.is_null()) {
        line += &format!(
            " (last: {} -> {}, {}, in {} ms)",
            last["from"].as_str().unwrap_or("?"),
            last["to"].as_str().unwrap_or("?"),
            last["at"].as_str().unwrap_or("?"),
            last["took_ms"]
        );
    }
    if let Some(waiting) = f["waiting"].as_str() {
        line += &format!("; waiting: {waiting}");
    }
    for kept in f["kept_out"].as_array().into_iter().flatten() {
        line += &format!(
            "; KEPT OUT: {}: {}",
            kept["server"].as_str().unwrap_or("?"),
            kept["why"].as_str().unwrap_or("?")
        );
    }
    Some(line)
}

/// Whether the load balancers run the same site file, by the hash each puts in its
/// heartbeats and `/status` (`cluster.config_hash`, and the peer's as last heard),
/// and whether they run the file `local` (its name and hash) this command read.
fn config_warnings(
    lbs: &[&str],
    docs: &[(&str, Option<serde_json::Value>)],
    local: Option<&(String, String)>,
) -> Vec<String> {
    // Each load balancer's hash: its own word first, else its peer's report of it
    // (a node that does not answer may still beat).
    let mut hashes: Vec<(&str, String)> = Vec::new();
    for lb in lbs {
        let own = docs
            .iter()
            .find(|(name, _)| name == lb)
            .and_then(|(_, doc)| doc.as_ref()?["cluster"]["config_hash"].as_str());
        let heard = docs.iter().find_map(|(_, doc)| {
            let peer = &doc.as_ref()?["cluster"]["peer"];
            (peer["name"].as_str() == Some(lb)).then_some(peer["config_hash"].as_str())?
        });
        if let Some(hash) = own.or(heard) {
            hashes.push((lb, hash.to_string()));
        }
    }
    let mut warnings = Vec::new();
    for (i, (a, hash_a)) in hashes.iter().enumerate() {
        for (b, hash_b) in &hashes[i + 1..] {
            if hash_a != hash_b {
                warnings.push(format!(
                    "{a} and {b} run different site files ({hash_a} vs {hash_b}): run the same \
                     file on both (a failover would change how the site behaves)"
                ));
            }
        }
    }
    if let Some((path, hash)) = local {
        let others: Vec<String> = hashes
            .iter()
            .filter(|(_, h)| h != hash)
            .map(|(name, h)| format!("{name} {h}"))
            .collect();
        if !others.is_empty() {
            let them = if others.len() == 1 { "it" } else { "them" };
            warnings.push(format!(
                "{path} ({hash}) is not the file running on {}: restart {them} with it if it \
                 is the one to run",
                others.join(", ")
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb(own: &str, peer: &str, peer_hash: Option<&str>) -> Option<serde_json::Value> {
        Some(
            json!({"cluster": {"config_hash": own, "peer": {"name": peer, "config_hash": peer_hash}}}),
        )
    }

    #[test]
    fn the_deciding_load_balancer_tells_the_failover() {
        let passive = serde_json::json!({"database_failover": {"deciding": false}});
        assert_eq!(failover_line("lb2", &passive), None);
        let active = serde_json::json!({"database_failover": {
            "deciding": true, "primary": "replica1", "failovers": 1, "waiting": null,
            "last": {"from": "primary", "to": "replica1", "at": "Fri, 27 Nov 2026 21:00:00 GMT", "took_ms": 5},
        }});
        assert_eq!(
            failover_line("lb1", &active).unwrap(),
            "database failover: decided by lb1; primary replica1; 1 failover(s) (last: \
             primary -> replica1, Fri, 27 Nov 2026 21:00:00 GMT, in 5 ms)"
        );
    }

    #[test]
    fn different_files_on_the_load_balancers_are_said_once() {
        let docs = [
            ("lb1", lb("aaaa", "lb2", Some("bbbb"))),
            ("lb2", lb("bbbb", "lb1", Some("aaaa"))),
            ("web1", Some(json!({}))),
        ];
        let w = config_warnings(&["lb1", "lb2"], &docs, None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("lb1 and lb2 run different site files (aaaa vs bbbb)"));
        let same = [
            ("lb1", lb("aaaa", "lb2", Some("aaaa"))),
            ("lb2", lb("aaaa", "lb1", Some("aaaa"))),
        ];
        assert!(config_warnings(&["lb1", "lb2"], &same, None).is_empty());
    }

    #[test]
    fn a_silent_load_balancer_is_known_by_its_peers_report() {
        let docs = [("lb1", lb("aaaa", "lb2", Some("cccc"))), ("lb2", None)];
        let w = config_warnings(&["lb1", "lb2"], &docs, None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("(aaaa vs cccc)"), "{w:?}");
        // Nothing heard of lb2 at all: nothing to compare.
        let docs = [("lb1", lb("aaaa", "lb2", None)), ("lb2", None)];
        assert!(config_warnings(&["lb1", "lb2"], &docs, None).is_empty());
    }

    #[test]
    fn a_local_file_the_nodes_do_not_run_is_said() {
        let docs = [
            ("lb1", lb("aaaa", "lb2", Some("aaaa"))),
            ("lb2", lb("aaaa", "lb1", Some("aaaa"))),
        ];
        let local = ("site.toml".to_string(), "dddd".to_string());
        let w = config_warnings(&["lb1", "lb2"], &docs, Some(&local));
        assert_eq!(
            w,
            [
                "site.toml (dddd) is not the file running on lb1 aaaa, lb2 aaaa: restart them \
              with it if it is the one to run"
            ]
        );
    }
}
