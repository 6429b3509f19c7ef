//! `scaleup prometheus`: a Prometheus configuration that scrapes every node of the
//! site. Each node already serves Prometheus text on its admin listener's `/metrics`
//! (`net::metrics`, the upstream pools, the cluster member, the app's database
//! servers); this only tells Prometheus where those listeners are.
//!
//! One job a role (`scaleup-lb`, `scaleup-web`, `scaleup-app`), so that `up` and the
//! scrape durations group the way the site is drawn; one target a node, labelled
//! with its `node` name and `role`. `honor_labels` keeps the nodes' own `node` label
//! (every series a node exports names the node already): without it Prometheus would
//! rename each of them to `exported_node`, and the dashboard's queries by `node`
//! would find nothing.
//!
//! The output is a whole configuration file (`prometheus --config.file=...` takes it
//! as it is); its `scrape_configs` entries can be pasted into an existing one.

use std::fmt::Write;
use std::time::Duration;

use site::Role;

use crate::SiteArgs;

/// How often each node is scraped: the nodes' counters are cheap to render, and a
/// failover lasts a few seconds, which a slower scrape would not show.
pub(crate) const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);

pub fn print(args: &SiteArgs) -> anyhow::Result<()> {
    let (path, site) = crate::load_site(args, false)?;
    print!("{}", render(&site, &path.display().to_string()));
    for warning in warnings(&site) {
        eprintln!("scaleup: warning: {warning}");
    }
    Ok(())
}

/// What in the site makes a target that Prometheus on another machine cannot reach:
/// an admin listener on an unspecified address (`0.0.0.0`, `::`) is where the node
/// binds, not an address to connect to.
pub(crate) fn warnings(site: &site::Site) -> Vec<String> {
    site.nodes()
        .filter(|(_, n)| n.admin.ip().is_unspecified())
        .map(|(_, n)| {
            format!(
                "{}'s admin address {} is a bind address: its target only reaches the node \
                 from Prometheus on the same machine; give the node's own address in the \
                 site file's `admin`, or change the target",
                n.name, n.admin
            )
        })
        .collect()
}

/// The job name for the nodes of `role`.
pub(crate) fn job_name(role: Role) -> String {
    format!("scaleup-{}", role.as_str())
}

/// The configuration for `site` (read from `source`, named in the heading comment).
pub(crate) fn render(site: &site::Site, source: &str) -> String {
    let interval = format!("{}s", SCRAPE_INTERVAL.as_secs());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Prometheus scrape configuration for site {} ({source}),\n\
         # printed by `scaleup prometheus`. Every node serves its metrics on its admin\n\
         # listener; examples/grafana-dashboard.json draws them.\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:",
        quote(&site.name)
    );
    for role in [Role::Lb, Role::Web, Role::App] {
        let nodes: Vec<&site::Node> = site
            .nodes()
            .filter(|(r, _)| *r == role)
            .map(|(_, n)| n)
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  - job_name: {}\n    metrics_path: /metrics\n    scheme: http\n    \
             scrape_interval: {interval}\n    scrape_timeout: {}s\n    honor_labels: true\n    \
             static_configs:",
            quote(&job_name(role)),
            // At most the interval: Prometheus refuses a timeout longer than it.
            SCRAPE_INTERVAL.as_secs().min(3)
        );
        for node in nodes {
            let _ = writeln!(
                out,
                "      - targets: [{}]\n        labels:\n          node: {}\n          \
                 role: {}\n          site: {}",
                quote(&node.admin.to_string()),
                quote(&node.name),
                quote(role.as_str()),
                quote(&site.name)
            );
        }
    }
    out
}

/// `s` as a YAML double-quoted scalar: JSON's string syntax is a subset of it, so a
/// name with a colon or a quote stays one string.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_site() -> site::Site {
        let text = site::default_site(18080, "/tmp/scaleup-prometheus-test", "secret");
        site::parse(&text, "(test)", std::path::Path::new("/tmp")).unwrap()
    }

    /// The lines of the job called `job`, up to the next job.
    fn job<'a>(out: &'a str, job: &str) -> Vec<&'a str> {
        let head = format!("  - job_name: \"{job}\"");
        let mut lines = out.lines().skip_while(|l| *l != head);
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("no job {job} in:\n{out}"));
        std::iter::once(first)
            .chain(lines.take_while(|l| !l.starts_with("  - job_name:")))
            .collect()
    }

    #[test]
    fn every_node_is_a_target_of_its_roles_job_with_its_admin_address_and_name() {
        let site = default_site();
        let out = render(&site, "site.toml");
        let mut targets = 0;
        for (role, node) in site.nodes() {
            let lines = job(&out, &job_name(role));
            let target = format!("      - targets: [\"{}\"]", node.admin);
            let at = lines
                .iter()
                .position(|l| *l == target)
                .unwrap_or_else(|| panic!("{} not in job {}:\n{out}", node.admin, role));
            assert_eq!(lines[at + 1], "        labels:");
            assert_eq!(lines[at + 2], format!("          node: \"{}\"", node.name));
            assert_eq!(lines[at + 3], format!("          role: \"{role}\""));
            targets += 1;
        }
        assert_eq!(
            out.matches("- targets:").count(),
            targets,
            "one target a node, no more:\n{out}"
        );
        assert_eq!(out.matches("- job_name:").count(), 3, "{out}");
    }

    #[test]
    fn each_job_scrapes_metrics_every_five_seconds_and_keeps_the_nodes_own_labels() {
        let out = render(&default_site(), "site.toml");
        assert!(out.contains("\nglobal:\n  scrape_interval: 5s\n"), "{out}");
        for role in [Role::Lb, Role::Web, Role::App] {
            let lines = job(&out, &job_name(role));
            for want in [
                "    metrics_path: /metrics",
                "    scrape_interval: 5s",
                "    scrape_timeout: 3s",
                "    honor_labels: true",
            ] {
                assert!(lines.contains(&want), "{want} not in {lines:#?}");
            }
        }
    }

    #[test]
    fn an_admin_listener_on_an_unspecified_address_is_warned_about() {
        let mut site = default_site();
        assert!(warnings(&site).is_empty());
        site.webs[0].node.admin = "0.0.0.0:9100".parse().unwrap();
        let warnings = warnings(&site);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("web1's admin address 0.0.0.0:9100 is a bind address"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_role_without_nodes_gets_no_job_and_odd_names_stay_one_string() {
        let mut site = default_site();
        site.apps.clear();
        site.name = "foo: \"bar\"".into();
        let out = render(&site, "site.toml");
        assert!(!out.contains("scaleup-app"), "{out}");
        assert!(out.contains("site: \"foo: \\\"bar\\\"\""), "{out}");
    }

    /// `examples/grafana-dashboard.json` as Grafana imports it: a recent schema, a
    /// Prometheus data-source variable every panel and query uses (so it works with
    /// whatever the user's data source is called), unique panel ids, and queries that
    /// select by the `node` label this configuration keeps. That its metric names are
    /// the ones a running site exports, and that a real Prometheus answers each query,
    /// is `tests/prometheus.rs`.
    #[test]
    fn the_grafana_dashboard_uses_its_datasource_variable_and_the_node_label() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../../examples/grafana-dashboard.json"))
                .expect("examples/grafana-dashboard.json is JSON");
        assert!(
            dash["schemaVersion"].as_u64().unwrap() >= 36,
            "{}",
            dash["schemaVersion"]
        );
        let vars = dash["templating"]["list"].as_array().unwrap();
        let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");
        let uses_variable =
            |d: &serde_json::Value| d["type"] == "prometheus" && d["uid"] == "${datasource}";
        let mut ids = std::collections::BTreeSet::new();
        let mut exprs = Vec::new();
        for panel in dash["panels"].as_array().unwrap() {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "duplicate id: {panel}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(uses_variable(&panel["datasource"]), "{}", panel["title"]);
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{} has no query", panel["title"]);
            for target in targets {
                assert!(uses_variable(&target["datasource"]), "{target}");
                let expr = target["expr"].as_str().unwrap();
                assert!(
                    expr.contains("node=~\"$node\""),
                    "{expr} ignores the node picker"
                );
                exprs.push(expr);
            }
        }
        assert!(exprs.len() >= 10, "{exprs:?}");
        let all = exprs.join("\n");
        for want in [
            "histogram_quantile(0.99",
            "scaleup_cluster_active",
            "scaleup_upstream_up",
            "scaleup_db_replica_lag_seconds",
            "class=\"5xx\"",
        ] {
            assert!(all.contains(want), "no panel uses {want}");
        }
    }
}
