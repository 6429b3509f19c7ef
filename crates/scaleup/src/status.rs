//! `scaleup status`: asks every node of a running site how it is doing, through
//! their admin listeners, and prints one line a node (or one JSON document).

use std::time::Duration;

use crate::SiteArgs;

pub fn status(args: &SiteArgs, json: bool) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
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
                &serde_json::json!({ "site": site.name, "nodes": nodes })
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
    if down > 0 {
        anyhow::bail!("{down} node(s) not healthy");
    }
    Ok(())
}

/// A one-line summary of a node's upstream pool (`web1 up, web2 DOWN`) or database.
fn details(doc: &serde_json::Value) -> String {
    let pool = doc.get("backend").or_else(|| doc.get("upstream"));
    if let Some(servers) = pool.and_then(|p| p["servers"].as_array()) {
        let parts: Vec<String> = servers
            .iter()
            .map(|s| {
                let up = s["up"].as_bool().unwrap_or(false);
                format!(
                    "{} {}",
                    s["name"].as_str().unwrap_or("?"),
                    if up { "up" } else { "DOWN" }
                )
            })
            .collect();
        return format!("-> {}", parts.join(", "));
    }
    if let Some(db) = doc.get("database") {
        return format!("database: {db}");
    }
    String::new()
}
