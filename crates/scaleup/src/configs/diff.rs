//! What a new site file changes for one node: what its role applies in place, and
//! what only a restart with the new file (`upgrade`) can change: the node's own
//! addresses, its role, the cluster, the database, and the client timeouts its
//! listeners' connections were built with.

use std::fmt::Debug;

use site::{Role, Site};

/// What a new site file changes for one node.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Applied in place by the reload.
    pub applied: Vec<String>,
    /// Only a restart with the new file (`scaleup upgrade`) changes these; the node
    /// keeps the old value until then.
    pub needs_upgrade: Vec<String>,
}

impl Changes {
    /// Notes `what` changed from `old` to `new` (compared by their `Debug` text: the
    /// site's types are plain data), into `applied` or `needs_upgrade`.
    fn note<T: Debug>(&mut self, live: bool, what: &str, old: &T, new: &T) {
        let (old, new) = (format!("{old:?}"), format!("{new:?}"));
        if old != new {
            let line = format!("{what}: {old} -> {new}");
            self.list(live).push(line);
        }
    }

    /// Notes that `what` changed, without saying to what (a secret, a long section).
    fn note_quietly<T: Debug>(&mut self, live: bool, what: &str, old: &T, new: &T) {
        if format!("{old:?}") != format!("{new:?}") {
            self.list(live).push(format!("{what} changed"));
        }
    }

    fn list(&mut self, live: bool) -> &mut Vec<String> {
        if live {
            &mut self.applied
        } else {
            &mut self.needs_upgrade
        }
    }

    /// Servers added, removed, moved or reweighted in a pool: `(name, address, weight)`.
    fn pool(&mut self, pool: &str, old: &[(String, String, u32)], new: &[(String, String, u32)]) {
        for (name, addr, weight) in new {
            match old.iter().find(|(n, _, _)| n == name) {
                None => self.applied.push(format!(
                    "{pool} pool: {name} added ({addr}, weight {weight})"
                )),
                Some((_, old_addr, old_weight)) => {
                    if old_addr != addr {
                        self.applied.push(format!(
                            "{pool} pool: {name} moved from {old_addr} to {addr} (a new \
                             server to the pool)"
                        ));
                    } else if old_weight != weight {
                        self.applied.push(format!(
                            "{pool} pool: {name} weight {old_weight} -> {weight}"
                        ));
                    }
                }
            }
        }
        for (name, _, _) in old {
            if !new.iter().any(|(n, _, _)| n == name) {
                self.applied.push(format!(
                    "{pool} pool: {name} removed (its requests in flight finish)"
                ));
            }
        }
    }

    /// As JSON, for `POST /reload`'s answer.
    pub fn to_json(&self, node: &str, config_hash: &str) -> serde_json::Value {
        serde_json::json!({
            "node": node,
            "config": config_hash,
            "applied": self.applied,
            "needs_upgrade": self.needs_upgrade,
        })
    }
}

/// The web servers a load balancer balances to: name, addresses (HTTP, and HTTPS for
/// `tcp` mode), weight.
fn lb_pool(site: &Site) -> Vec<(String, String, u32)> {
    site.balancer
        .servers
        .iter()
        .filter_map(|s| site.web(s))
        .map(|w| {
            let addr = match w.tls_listen {
                Some(tls) => format!("{}, HTTPS {tls}", w.node.listen),
                None => w.node.listen.to_string(),
            };
            (w.node.name.clone(), addr, w.weight)
        })
        .collect()
}

/// The application servers web server `web` proxies to: name, address, weight.
fn app_pool(site: &Site, web: &site::WebNode) -> Vec<(String, String, u32)> {
    web.apps
        .iter()
        .filter_map(|a| site.app(a))
        .map(|a| (a.node.name.clone(), a.node.listen.to_string(), a.weight))
        .collect()
}

/// What going from site `old` to site `new` changes for node `name`, or why the new
/// file cannot be applied to it at all (it is gone, or has another role: that is a new
/// node, to start as such).
pub(crate) fn diff(old: &Site, new: &Site, name: &str) -> Result<Changes, String> {
    let (Some((role, old_node)), Some((new_role, new_node))) = (old.node(name), new.node(name))
    else {
        return Err(format!(
            "`{name}` is not in the new site file: a reload cannot remove a node (stop it)"
        ));
    };
    if role != new_role {
        return Err(format!(
            "`{name}` changes role in the new site file ({role:?} -> {new_role:?}): that is a \
             new node; stop this one and start it with the new file"
        ));
    }
    let mut c = Changes::default();
    c.note(false, "listen", &old_node.listen, &new_node.listen);
    c.note(false, "bind", &old_node.bind, &new_node.bind);
    c.note(false, "admin", &old_node.admin, &new_node.admin);
    c.note(false, "state_dir", &old.state_dir, &new.state_dir);
    c.note(
        false,
        "admin_token_env",
        &old.admin_token_env,
        &new.admin_token_env,
    );
    c.note_quietly(false, "[database]", &old.database, &new.database);
    match role {
        Role::Lb => lb_diff(&mut c, old, new, name),
        Role::Web => web_diff(&mut c, old, new, name),
        // The application server takes no reload (see `reload`); its settings, all
        // made at start, are a restart's.
        Role::App => {
            let (o, n) = (old.app(name), new.app(name));
            c.note(
                false,
                "access_log",
                &o.map(|a| &a.access_log),
                &n.map(|a| &a.access_log),
            );
            c.note(false, "weight", &o.map(|a| a.weight), &n.map(|a| a.weight));
        }
    }
    if matches!(role, Role::Lb | Role::Web) {
        c.note(true, "log_format", &old.log_format, &new.log_format);
    }
    Ok(c)
}

fn lb_diff(c: &mut Changes, old: &Site, new: &Site, name: &str) {
    let (o, n) = (
        old.lb(name).expect("role checked"),
        new.lb(name).expect("role checked"),
    );
    c.note(false, "tls_listen", &o.tls_listen, &n.tls_listen);
    c.note(false, "heartbeat", &o.heartbeat, &n.heartbeat);
    c.note(false, "priority", &o.priority, &n.priority);
    c.note(true, "access_log", &o.access_log, &n.access_log);
    c.note_quietly(false, "[cluster]", &old.cluster, &new.cluster);
    c.pool("web", &lb_pool(old), &lb_pool(new));
    let (ob, nb) = (&old.balancer, &new.balancer);
    c.note(true, "balancer.algorithm", &ob.algorithm, &nb.algorithm);
    c.note(true, "balancer.health", &ob.health, &nb.health);
    c.note(true, "balancer.retries", &ob.retries, &nb.retries);
    c.note(
        true,
        "balancer.https_redirect",
        &ob.https_redirect,
        &nb.https_redirect,
    );
    c.note(
        true,
        "balancer.trusted_proxies",
        &ob.trusted_proxies,
        &nb.trusted_proxies,
    );
    c.note(true, "balancer.slowstart", &ob.slowstart, &nb.slowstart);
    timeouts(c, "balancer.timeouts", &ob.timeouts, &nb.timeouts);
    c.note(false, "balancer.tls_mode", &ob.tls_mode, &nb.tls_mode);
    c.note(
        true,
        "balancer.max_connections",
        &ob.max_connections,
        &nb.max_connections,
    );
    c.note(
        true,
        "balancer.max_connections_per_client",
        &ob.max_connections_per_client,
        &nb.max_connections_per_client,
    );
    if n.tls_listen.is_some() && nb.tls_mode == site::TlsMode::Http {
        c.note(true, "[tls] certificate", &old.tls.files, &new.tls.files);
    }
}

fn web_diff(c: &mut Changes, old: &Site, new: &Site, name: &str) {
    let (o, n) = (
        old.web(name).expect("role checked"),
        new.web(name).expect("role checked"),
    );
    c.note(false, "tls_listen", &o.tls_listen, &n.tls_listen);
    c.pool("app", &app_pool(old, o), &app_pool(new, n));
    c.note(true, "root", &o.root, &n.root);
    c.note(true, "access_log", &o.access_log, &n.access_log);
    c.note(true, "health", &o.health, &n.health);
    c.note(true, "slowstart", &o.slowstart, &n.slowstart);
    c.note(true, "headers", &o.headers, &n.headers);
    c.note(true, "cache", &o.cache, &n.cache);
    c.note(true, "max_body_bytes", &o.max_body_bytes, &n.max_body_bytes);
    timeouts(c, "timeouts", &o.timeouts, &n.timeouts);
    c.note(
        true,
        "max_connections",
        &o.max_connections,
        &n.max_connections,
    );
    c.note(
        true,
        "max_connections_per_client",
        &o.max_connections_per_client,
        &n.max_connections_per_client,
    );
    if n.tls_listen.is_some() {
        c.note(true, "[tls] certificate", &old.tls.files, &new.tls.files);
        c.note(true, "[tls] hsts", &old.tls.hsts, &new.tls.hsts);
    }
    // The load balancers' addresses: who may send a PROXY header (fixed in the HTTPS
    // listener) and whose forwarding headers are believed.
    let lbs = |s: &Site| -> Vec<(std::net::SocketAddr, std::net::SocketAddr)> {
        s.lbs.iter().map(|l| (l.node.listen, l.node.bind)).collect()
    };
    c.note(false, "the load balancers' addresses", &lbs(old), &lbs(new));
}

/// The upstream timeouts live in the pool (applied); the client ones in the listeners.
fn timeouts(c: &mut Changes, what: &str, o: &site::Timeouts, n: &site::Timeouts) {
    c.note(true, &format!("{what}.connect"), &o.connect, &n.connect);
    c.note(true, &format!("{what}.server"), &o.server, &n.server);
    c.note(true, &format!("{what}.tunnel"), &o.tunnel, &n.tunnel);
    c.note(false, &format!("{what}.client"), &o.client, &n.client);
    c.note(false, &format!("{what}.drain"), &o.drain, &n.drain);
    c.note(
        false,
        &format!("{what}.keepalive"),
        &o.keepalive,
        &n.keepalive,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(text: &str) -> Site {
        site::parse(text, "test", std::path::Path::new("/tmp")).unwrap()
    }

    fn default_text() -> String {
        site::default_site(20000, "/tmp/scaleup-configs-test", "secret")
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let old = site(&default_text());
        for name in ["lb1", "web1", "app1"] {
            assert_eq!(
                diff(&old, &old, name).unwrap(),
                Changes::default(),
                "{name}"
            );
        }
    }

    #[test]
    fn pool_settings_apply_and_own_addresses_need_an_upgrade() {
        let old = site(&default_text());
        let new = site(
            &default_text()
                .replacen("algorithm = \"roundrobin\"", "algorithm = \"leastconn\"", 1)
                .replacen("weight = 1\n", "weight = 4\n", 1)
                .replacen("max_connections = 10000", "max_connections = 500", 1)
                .replacen(
                    "listen = \"127.0.0.1:20001\"",
                    "listen = \"127.0.0.1:20030\"",
                    1,
                )
                .replacen("interval = \"100ms\"", "interval = \"200ms\"", 1),
        );
        let lb1 = diff(&old, &new, "lb1").unwrap();
        assert_eq!(
            lb1.applied,
            vec![
                "web pool: web1 weight 1 -> 4".to_string(),
                "balancer.algorithm: RoundRobin -> LeastConn".to_string(),
                "balancer.max_connections: 10000 -> 500".to_string(),
            ]
        );
        assert!(lb1
            .needs_upgrade
            .iter()
            .any(|c| c.starts_with("listen: 127.0.0.1:20001")));
        assert!(lb1.needs_upgrade.contains(&"[cluster] changed".to_string()));
        // lb2's own address did not move; web1 balances to no web server.
        let lb2 = diff(&old, &new, "lb2").unwrap();
        assert!(!lb2.needs_upgrade.iter().any(|c| c.starts_with("listen")));
        // web1 believes forwarding headers from lb1's new address only after a restart.
        let web1 = diff(&old, &new, "web1").unwrap();
        assert!(web1.applied.is_empty(), "{web1:?}");
        assert_eq!(web1.needs_upgrade.len(), 1, "{web1:?}");
        assert!(web1.needs_upgrade[0].starts_with("the load balancers' addresses"));
    }

    #[test]
    fn servers_added_and_removed_and_web_settings_apply() {
        let two_apps = default_text().replacen("apps = [\"app1\"]", "apps = [\"app1\", \"app2\"]", 1)
            + "\n[[app]]\nname = \"app2\"\nlisten = \"127.0.0.1:20040\"\nadmin = \"127.0.0.1:20041\"\n";
        let old = site(&two_apps);
        let new = site(
            &default_text()
                .replacen(
                    "cache_control = \"public, max-age=3600\"",
                    "cache_control = \"no-cache\"",
                    1,
                )
                .replacen("hsts = \"max-age=63072000\"", "hsts = \"max-age=60\"", 1)
                .replacen("[[web.cache]]", "max_body_bytes = 1000\n\n[[web.cache]]", 1),
        );
        let web1 = diff(&old, &new, "web1").unwrap();
        let has = |prefix: &str| web1.applied.iter().any(|c| c.starts_with(prefix));
        assert!(has("app pool: app2 removed"), "{web1:?}");
        assert!(has("cache: "), "{web1:?}");
        assert!(has("max_body_bytes: "), "{web1:?}");
        assert!(has("[tls] hsts: "), "{web1:?}");
        assert!(web1.needs_upgrade.is_empty(), "{web1:?}");
        let back = diff(&new, &old, "web1").unwrap();
        assert!(back
            .applied
            .iter()
            .any(|c| c.starts_with("app pool: app2 added (127.0.0.1:20040, weight 1)")));
        // A node gone from the file, or with another role, is refused.
        assert!(diff(&old, &new, "app2")
            .unwrap_err()
            .contains("not in the new site file"));
    }

    #[test]
    fn the_database_needs_an_upgrade_everywhere() {
        let old = site(&default_text());
        let new = site(&default_text().replacen("path = \"foobar.db\"", "path = \"other.db\"", 1));
        for name in ["lb1", "web1", "app1"] {
            let c = diff(&old, &new, name).unwrap();
            assert_eq!(
                c.needs_upgrade,
                vec!["[database] changed".to_string()],
                "{name}"
            );
            assert!(c.applied.is_empty(), "{name}");
        }
    }
}
