//! Explaining a site to a person: what `scaleup explain` prints.
//!
//! From a resolved [`Site`] this builds four things ([`explain`]):
//!
//! - a Mermaid diagram (`graph TD`) of the request path, for Markdown viewers;
//! - a plain-text picture drawn with box characters, for an 80-column terminal;
//! - every element of the site (the DNS entry, the load balancers' floating address
//!   when they form a cluster, each node, the database) with why it is there, in the
//!   words of the scale-up design;
//! - the site's risks (single points of failure, no TLS, plain HTTP still served,
//!   no HSTS, plain HTTP between machines, unauthenticated heartbeats, forwarding
//!   headers trusted from everyone, open admin listeners, idle nodes), most serious
//!   first, each with what would remove it. Only what is true of the site is listed.
//!
//! The parts live in `elements.rs`, `risks.rs`, `mermaid.rs`, `picture.rs` (the
//! terminal picture) and `helpers.rs`.
//!
//! Nothing here reads files or opens sockets; it only looks at the model.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod elements;
mod helpers;
mod mermaid;
mod picture;
mod risks;
#[cfg(test)]
mod tests;

use elements::*;
use helpers::*;
use mermaid::*;
use picture::*;
use risks::*;

use crate::model::{
    Algorithm, Cluster, Database, Floating, LbNode, Node, Secret, Site, TlsMode, WebNode,
};

/// Terminal width the picture and the text are laid out for.
const WIDTH: usize = 80;
/// Left margin of the picture's tiers.
const INDENT: usize = 2;

/// Everything `scaleup explain` says about a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The request path as a Mermaid `graph TD` diagram (without the code fence).
    pub mermaid: String,
    /// The same tiers as a box-drawing picture for a terminal, at most 80 columns
    /// wide unless a single address or path is longer than that.
    pub picture: String,
    /// The DNS entry, every node and the database, in request order, with why each
    /// one is there.
    pub elements: Vec<Element>,
    /// What could go wrong with this site, most serious first.
    pub risks: Vec<Risk>,
}

/// One element of the site and the reason it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The node name (`lb1`), the site name for the DNS entry, `floating address` for
    /// the load-balancer cluster, `database` for the database.
    pub name: String,
    /// What it is: "DNS entry", "load-balancer cluster", "load balancer", "web server",
    /// "application server", "database".
    pub kind: String,
    /// Where it is reached: listen, admin (and heartbeat) addresses for a node, the
    /// records for the DNS entry, the floating address for the cluster, the file for
    /// the database.
    pub address: String,
    /// Why the design has it, in plain English.
    pub why: String,
}

/// Something that could take the site (or its data) down or expose it, with its remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    /// How bad it is; risks are ordered by it.
    pub severity: Severity,
    /// What the risk is and what would happen.
    pub what: String,
    /// What would remove it.
    pub fix: String,
}

/// How serious a [`Risk`] is. Orders from most to least serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The site goes down, loses data, or leaks secrets.
    High,
    /// The site degrades or exposes its internals.
    Medium,
    /// Waste or confusion, not harm.
    Low,
}

impl Severity {
    /// The word printed for this severity.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Explains `site`: its diagram, its picture, why each element is there, its risks.
pub fn explain(site: &Site) -> Explanation {
    let view = View::new(site);
    Explanation {
        mermaid: mermaid(&view),
        picture: picture(&view),
        elements: elements(&view),
        risks: risks(&view),
    }
}

impl Explanation {
    /// What `scaleup explain` prints to a terminal: the picture, the Mermaid diagram
    /// in a fenced block, every element with why it is there, and the risks with the
    /// fix for each.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.picture);
        out.push('\n');
        out.push_str(
            "The same as a Mermaid diagram (GitHub and most Markdown viewers draw it):\n\n",
        );
        out.push_str("```mermaid\n");
        out.push_str(&self.mermaid);
        if !self.mermaid.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("```\n\n");

        out.push_str("Why each element is there\n\n");
        for e in &self.elements {
            let head = if e.name == e.kind {
                e.name.clone()
            } else {
                format!("{} ({})", e.name, e.kind)
            };
            out.push_str(&wrap(&head, "  ", "  "));
            out.push_str(&wrap(&e.address, "    at ", "       "));
            out.push_str(&wrap(&e.why, "    ", "    "));
            out.push('\n');
        }

        if self.risks.is_empty() {
            out.push_str("Risks: none found.\n");
        } else {
            out.push_str("Risks, most serious first\n\n");
            for (i, r) in self.risks.iter().enumerate() {
                let head = format!("  {}. [{}] ", i + 1, r.severity.as_str().to_uppercase());
                let hang = " ".repeat(format!("  {}. ", i + 1).len());
                out.push_str(&wrap(&r.what, &head, &hang));
                out.push_str(&wrap(&r.fix, &format!("{hang}Fix: "), &hang));
                out.push('\n');
            }
        }
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_text())
    }
}

/// The site with the facts every part of the explanation needs worked out once.
struct View<'a> {
    site: &'a Site,
    /// The web servers the load balancers send to, in `balancer.servers` order, once each.
    pool: Vec<&'a WebNode>,
    /// The application servers that some pooled web server proxies to, once each,
    /// in site order.
    used_apps: Vec<&'a str>,
    /// Mermaid node id for each node name.
    ids: HashMap<&'a str, String>,
    /// The load-balancer cluster, when the site has one.
    cluster: Option<&'a Cluster>,
    /// The load balancers in election order: higher priority first, then the name
    /// that sorts first (the cluster's tie-break). The first one starts active.
    ranked: Vec<&'a LbNode>,
}

impl<'a> View<'a> {
    fn new(site: &'a Site) -> Self {
        let mut pool: Vec<&WebNode> = Vec::new();
        for name in &site.balancer.servers {
            if let Some(web) = site.web(name) {
                if !pool.iter().any(|w| w.node.name == web.node.name) {
                    pool.push(web);
                }
            }
        }
        let used_apps = site
            .apps
            .iter()
            .map(|a| a.node.name.as_str())
            .filter(|a| pool.iter().any(|w| w.apps.iter().any(|x| x == a)))
            .collect();

        let mut ids: HashMap<&str, String> = HashMap::new();
        let mut taken: Vec<String> = ["user", "dns", "vip", "db"].map(String::from).to_vec();
        for (role, node) in site.nodes() {
            let base = format!("{}_{}", role.as_str(), mermaid_id(&node.name));
            let mut id = base.clone();
            let mut n = 2;
            while taken.contains(&id) {
                id = format!("{base}_{n}");
                n += 1;
            }
            taken.push(id.clone());
            ids.insert(node.name.as_str(), id);
        }
        let mut ranked: Vec<&LbNode> = site.lbs.iter().collect();
        ranked.sort_by_key(|l| (Reverse(l.priority), l.node.name.as_str()));
        View {
            site,
            pool,
            used_apps,
            ids,
            cluster: site.cluster.as_ref(),
            ranked,
        }
    }

    /// The cluster with the node that starts active and the one that starts passive,
    /// when the site has a cluster of two load balancers.
    fn pair(&self) -> Option<(&'a Cluster, &'a LbNode, &'a LbNode)> {
        match (self.cluster, self.ranked.as_slice()) {
            (Some(c), [active, passive]) => Some((c, active, passive)),
            _ => None,
        }
    }

    fn id(&self, name: &str) -> String {
        self.ids
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("n_{}", mermaid_id(name)))
    }

    fn in_pool(&self, web: &str) -> bool {
        self.pool.iter().any(|w| w.node.name == web)
    }

    /// The web servers (any, pooled or not) that proxy to `app`.
    fn webs_of(&self, app: &str) -> Vec<&'a str> {
        self.site
            .webs
            .iter()
            .filter(|w| w.apps.iter().any(|a| a == app))
            .map(|w| w.node.name.as_str())
            .collect()
    }

    fn lb_names(&self) -> Vec<&'a str> {
        self.site.lbs.iter().map(|l| l.node.name.as_str()).collect()
    }

    fn app_names(&self) -> Vec<&'a str> {
        self.site
            .apps
            .iter()
            .map(|a| a.node.name.as_str())
            .collect()
    }
}

/// How the database is described: its kind, where it is, and whether it is an
/// SQLite file on the application servers' disk.
struct DbFacts {
    /// "SQLite file", say.
    kind: &'static str,
    /// The file or server address.
    location: String,
    /// The data lives inside the application servers (one disk, one machine).
    embedded: bool,
    /// Replicas (`replica1 127.0.0.1:3307`), for a replicated database; empty otherwise.
    replicas: Vec<String>,
}

fn db_facts(db: &Database) -> DbFacts {
    match db {
        Database::Sqlite { path } => DbFacts {
            kind: "SQLite file",
            location: path.display().to_string(),
            embedded: true,
            replicas: Vec::new(),
        },
        Database::Mysql(m) => DbFacts {
            kind: if m.managed {
                "MariaDB primary (managed by scaleup up)"
            } else {
                "MySQL/MariaDB primary"
            },
            location: m.primary.address(),
            embedded: false,
            replicas: m
                .replicas
                .iter()
                .map(|r| format!("{} {}", r.name, r.address()))
                .collect(),
        },
    }
}
