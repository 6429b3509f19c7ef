//! Explaining a site to a person: what `scaleup explain` prints.
//!
//! From a resolved [`Site`] this builds four things ([`explain`]):
//!
//! - a Mermaid diagram (`graph TD`) of the request path, for Markdown viewers;
//! - a plain-text picture drawn with box characters, for an 80-column terminal;
//! - every element of the site (the DNS entry, the load balancers' floating address
//!   when they form a cluster, each node, the database) with why it is there, in the
//!   words of the scale-up design;
//! - the site's risks (single points of failure, no TLS, unauthenticated heartbeats,
//!   open admin listeners, idle nodes), most serious first, each with what would
//!   remove it.
//!
//! Nothing here reads files or opens sockets; it only looks at the model.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

// ---------------------------------------------------------------------------------
// Elements
// ---------------------------------------------------------------------------------

fn elements(v: &View) -> Vec<Element> {
    let site = v.site;
    let mut out = Vec::new();

    if let Some((c, active, passive)) = v.pair() {
        let addr = c.floating.describe();
        out.push(Element {
            name: site.name.clone(),
            kind: "DNS entry".into(),
            address: format!(
                "{} (the floating address {addr})",
                floating_record(&c.floating)
            ),
            why: format!(
                "Turns {} into the one address where browsers connect: the load balancers' \
                 floating address ({addr}), held by whichever load balancer is active. When \
                 the active one fails the address moves to the other one, not the DNS entry, \
                 so no DNS change is needed and no browser is left with a dead load \
                 balancer's address in its cache.",
                site.name
            ),
        });
        out.push(cluster_element(c, active, passive));
    } else {
        let records: Vec<String> = site
            .lbs
            .iter()
            .map(|l| format!("{} ({})", dns_record(&l.node.listen), l.node.name))
            .collect();
        let lb_ips = join(&dedup(
            site.lbs.iter().map(|l| l.node.listen.ip().to_string()),
        ));
        let why = if site.lbs.len() >= 2 {
            format!(
                "Turns {} into the addresses where browsers connect: the load balancers. They \
                 are not a cluster, so there is no floating address: the DNS entry lists every \
                 load balancer's address ({lb_ips}) and each browser picks one of them.",
                site.name
            )
        } else {
            format!(
                "Turns {} into the address where browsers connect: the load balancer's \
                 ({lb_ips}).",
                site.name
            )
        };
        out.push(Element {
            name: site.name.clone(),
            kind: "DNS entry".into(),
            address: records.join(", "),
            why,
        });
    }

    let b = &site.balancer;
    let pool_names: Vec<&str> = v.pool.iter().map(|w| w.node.name.as_str()).collect();
    let n_lbs = site.lbs.len();
    for lb in &site.lbs {
        let mut why = format!(
            "The entry point of {}: it distributes incoming requests over the web servers in \
             its pool ({}), {} ({}), so that no web server is overwhelmed. It checks every \
             web server's health (GET {} every {}; {} failed checks take a server out, {} good \
             ones bring it back), so a dead web server stops receiving requests.",
            site.name,
            join(&pool_names),
            algorithm_words(b.algorithm),
            b.algorithm.as_str(),
            b.health.path,
            humantime::format_duration(b.health.interval),
            b.health.fall,
            b.health.rise,
        );
        let mut address = node_address(&lb.node);
        if let Some((c, active, passive)) = v.pair() {
            if let Some(hb) = lb.heartbeat {
                let _ = write!(address, ", heartbeat {hb}");
            }
            let peer = if lb.node.name == active.node.name {
                passive
            } else {
                active
            };
            if lb.node.name == active.node.name {
                let _ = write!(
                    why,
                    " It is the active member of the load-balancer cluster at start \
                     (priority {}, higher than {}'s {}): it holds the floating address {} and \
                     serves every client, while {} watches it by heartbeat, ready to take \
                     over.",
                    lb.priority,
                    peer.node.name,
                    peer.priority,
                    c.floating.describe(),
                    peer.node.name
                );
            } else {
                let _ = write!(
                    why,
                    " It is the passive member of the load-balancer cluster at start \
                     (priority {}, {} has {}): it serves no client while {} holds the \
                     floating address, watches {} by heartbeat every {}, and takes the address \
                     when {} fails.",
                    lb.priority,
                    peer.node.name,
                    peer.priority,
                    peer.node.name,
                    peer.node.name,
                    humantime::format_duration(c.interval),
                    peer.node.name
                );
            }
            if lb.priority == peer.priority {
                let _ = write!(
                    why,
                    " The two priorities are equal, so the name that sorts first ({}) starts \
                     active.",
                    active.node.name
                );
            }
        } else if n_lbs >= 2 {
            let _ = write!(
                why,
                " It is one of {n_lbs} load balancers ({}), so that the failure of one load \
                 balancer does not take the whole site down. They are not a cluster: the DNS \
                 entry lists each of them and nothing moves a failed one's clients to another \
                 (see the risks).",
                join(&v.lb_names())
            );
        } else {
            why.push_str(
                " It is the only load balancer: a second one, clustered with it (a [cluster] \
                 section), would remove the load balancer as a single point of failure.",
            );
        }
        out.push(Element {
            name: lb.node.name.clone(),
            kind: "load balancer".into(),
            address,
            why,
        });
    }

    for web in &site.webs {
        let root = match &web.root {
            Some(p) => format!("from {}", p.display()),
            None => "from the built-in foobar assets".into(),
        };
        let mut why = format!(
            "Serves the static files (HTML, CSS, JavaScript, images) itself, {root}, so the \
             application servers spend their time only on dynamic pages. It is a reverse proxy: \
             everything else goes to {} over a keep-alive pool, and it checks their health. And \
             it is a security layer in front of the application: browsers never talk to an \
             application server directly, and slow or excessive clients stop here (at most {} \
             connections, {} to send a request).",
            join(&web.apps),
            web.max_connections,
            humantime::format_duration(web.timeouts.client),
        );
        if !v.in_pool(&web.node.name) {
            why.push_str(
                " No load balancer sends to it today: it is not listed in balancer.servers.",
            );
        }
        out.push(Element {
            name: web.node.name.clone(),
            kind: "web server".into(),
            address: node_address(&web.node),
            why,
        });
    }

    for app in &site.apps {
        let name = app.node.name.as_str();
        let mut why = String::from(
            "Runs the foobar application: its business logic and dynamic content (pages and \
             the JSON API, users, sign-in, sessions), and it is the only tier that talks to the \
             database. It keeps no state of its own (sessions live in the database), so \
             application servers are interchangeable and the tier scales by adding [[app]] \
             nodes.",
        );
        let webs = v.webs_of(name);
        if webs.is_empty() {
            why.push_str(" No web server proxies to it today.");
        } else {
            let _ = write!(why, " It receives requests from {}.", join(&webs));
        }
        out.push(Element {
            name: name.to_string(),
            kind: "application server".into(),
            address: node_address(&app.node),
            why,
        });
    }

    let db = db_facts(&site.database);
    let mut why = String::from(
        "Keeps all of the foobar data (users, sessions, content) in one place, so every \
         application server sees the same data and there is one thing to back up. Kept apart \
         from the application code, it can be backed up and scaled on its own.",
    );
    if db.embedded {
        let _ = write!(
            why,
            " Today it is an {} embedded in the application server ({}): simple and fast, \
             but on one machine's disk (see the risks).",
            db.kind,
            join(&v.app_names())
        );
    }
    if let Database::Mysql(m) = &site.database {
        let _ = write!(
            why,
            " Writes go to the primary; reads are spread over {} replica(s) kept in step by \
             GTID replication, skipping any that is down or more than {:?} behind, and a \
             visitor's read waits (at most {:?}) for their own last write or goes to the \
             primary, so nobody misses what they just posted.",
            m.replicas.len(),
            m.max_replica_lag,
            m.read_your_writes_timeout
        );
    }
    out.push(Element {
        name: "database".into(),
        kind: "database".into(),
        address: format!("{} {}", db.kind, db.location),
        why,
    });
    out
}

/// The floating address as an element: why the cluster is there and how it takes over.
fn cluster_element(c: &Cluster, active: &LbNode, passive: &LbNode) -> Element {
    let addr = c.floating.describe();
    let (a, p) = (&active.node.name, &passive.node.name);
    let signed = if c.secret.is_some() {
        "signed with the shared secret, so forged or replayed ones are refused"
    } else {
        "not authenticated (see the risks)"
    };
    let mut why = format!(
        "Makes the two load balancers one, so that the failure of one does not take the site \
         down: the load balancer is no longer a single point of failure. {a} (priority {}) \
         starts active and holds this address; {p} (priority {}) starts passive and watches \
         it through heartbeats every {} ({signed}). When {a} stops answering, {p} takes the \
         address after {} missed heartbeats, within about {}; when {a}'s process dies, the \
         heartbeat link between them (a TCP connection) closes and {p} takes over at once. A \
         load balancer whose web servers are all down gives way to one whose are not.",
        active.priority,
        passive.priority,
        humantime::format_duration(c.interval),
        c.dead_after,
        humantime::format_duration(dead_time(c)),
    );
    match &c.floating {
        Floating::Local { .. } => why.push_str(
            " In local mode the address is a loopback port that only the active load balancer \
             binds, so both run on this machine: it shows the takeover, but does not survive \
             the loss of the machine.",
        ),
        Floating::Linux {
            interface,
            address,
            prefix,
            ..
        } => {
            let _ = write!(
                why,
                " In linux mode the node becoming active adds {address}/{prefix} to {interface} \
                 and announces it with gratuitous ARP, so switches and neighbours send the \
                 address's traffic to the new machine at once instead of when their ARP \
                 entries expire; the node stepping down removes it."
            );
        }
        Floating::Hook {
            on_active,
            on_passive,
            ..
        } => {
            why.push_str(
                " In hook mode scaleup runs your commands to move the address (through a cloud \
                 provider's API, say)",
            );
            if let Some(cmd) = on_active {
                let _ = write!(why, ": `{cmd}` on becoming active");
            }
            if let Some(cmd) = on_passive {
                let _ = write!(why, ", `{cmd}` on becoming passive");
            }
            why.push('.');
        }
    }
    if c.preempt {
        let _ = write!(
            why,
            " Preempt is on: when {a} comes back after a failure it takes the address back \
             from {p}, which moves the clients a second time."
        );
    } else {
        let _ = write!(
            why,
            " Preempt is off: when {a} comes back after a failure it stays passive and {p} \
             keeps the address, so the clients move only once."
        );
    }
    let auth = if c.secret.is_some() {
        "authenticated"
    } else {
        "not authenticated"
    };
    Element {
        name: "floating address".into(),
        kind: "load-balancer cluster".into(),
        address: format!(
            "{addr}, {} mode; heartbeats every {}, {auth}",
            mode_name(&c.floating),
            humantime::format_duration(c.interval)
        ),
        why,
    }
}

fn algorithm_words(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin => "each in turn",
        Algorithm::LeastConn => "to the one with the fewest requests in flight",
        Algorithm::Source => "by a hash of the client's address, so a client keeps its server",
    }
}

// ---------------------------------------------------------------------------------
// Risks
// ---------------------------------------------------------------------------------

fn risks(v: &View) -> Vec<Risk> {
    let site = v.site;
    let mut out = Vec::new();

    // The load balancers.
    if let Some((c, _, _)) = v.pair() {
        cluster_risks(c, &mut out);
    } else {
        match site.lbs.as_slice() {
            [] => {}
            [only] => out.push(Risk {
                severity: Severity::High,
                what: format!(
                    "The load balancer {} is a single point of failure: every client enters \
                     through it, so if it stops nobody reaches {}, however healthy the servers \
                     behind it are.",
                    only.node.name, site.name
                ),
                fix: "Add a second [[lb]] node on another machine and make the two a cluster: a \
                      [cluster] section (mode, the floating address, secret_env) and heartbeat \
                      and priority on each [[lb]]. Point DNS at the floating address; the \
                      passive load balancer then takes it over when the active one fails."
                    .into(),
            }),
            many => out.push(Risk {
                severity: Severity::Medium,
                what: format!(
                    "The {} load balancers ({}) are not a cluster: there is no floating \
                     address, and no shared heartbeat secret is configured, so nothing moves \
                     traffic off a failed one. Clients that resolved the dead one's address \
                     fail until DNS stops giving it out and their cached answer expires.",
                    many.len(),
                    join(&v.lb_names())
                ),
                fix: format!(
                    "Make them a cluster{}: add a [cluster] section with mode (\"linux\" on two \
                     servers, \"local\" on one machine, \"hook\" for a cloud API), the floating \
                     address (address = \"10.0.0.100/24:80\" with interface = \"eth0\" in \
                     linux mode) and secret_env = \"SCALEUP_CLUSTER_SECRET\"; give each [[lb]] \
                     a heartbeat = \"IP:PORT\" and a priority (the higher one starts active); \
                     and point DNS at the floating address alone. The passive load balancer \
                     then takes the address when the active one fails.",
                    if many.len() > 2 {
                        " (a cluster is two load balancers: keep two of them)"
                    } else {
                        ""
                    }
                ),
            }),
        }
    }

    // The web tier.
    if let [only] = v.pool.as_slice() {
        let name = &only.node.name;
        let others: Vec<&str> = site
            .webs
            .iter()
            .map(|w| w.node.name.as_str())
            .filter(|w| w != name)
            .collect();
        out.push(Risk {
            severity: Severity::High,
            what: format!(
                "The web server {name} is a single point of failure: the load balancers send \
                 every request to it, so if it stops the whole site is down."
            ),
            fix: if others.is_empty() {
                format!(
                    "Add a second [[web]] node (on its own machine) and list it in \
                     balancer.servers, e.g. servers = [\"{name}\", \"web2\"]; the load \
                     balancers' health checks then route around a failed one."
                )
            } else {
                format!(
                    "List {} in balancer.servers as well; the load balancers' health checks \
                     then route around a failed web server.",
                    join(&others)
                )
            },
        });
    }

    // The application tier.
    if let [only] = v.used_apps.as_slice() {
        let others: Vec<&str> = v.app_names().into_iter().filter(|a| a != only).collect();
        out.push(Risk {
            severity: Severity::High,
            what: format!(
                "The application server {only} is a single point of failure: every dynamic \
                 request (pages, sign-in, the API) ends there, so if it stops only static \
                 files are still served."
            ),
            fix: if others.is_empty() {
                "Add a second [[app]] node and list it in each web server's apps (a web server \
                 without an apps key uses every application server). Sessions live in the \
                 database, so application servers are interchangeable and no sticky sessions \
                 are needed."
                    .into()
            } else {
                format!(
                    "List {} in the web servers' apps as well. Sessions live in the database, \
                     so application servers are interchangeable.",
                    join(&others)
                )
            },
        });
    }

    // The database.
    let db = db_facts(&site.database);
    if db.embedded {
        out.push(Risk {
            severity: Severity::High,
            what: format!(
                "The database is a single point of failure for all data and every write: it \
                 is one {} ({}) on the application server's disk. If that disk or machine is \
                 lost, so is everything since the last backup; and because the file is \
                 embedded, the application tier is tied to that one machine.",
                db.kind, db.location
            ),
            fix: "Move the data to a MySQL/MariaDB primary with replicas on machines of their \
                  own: writes go to the primary, reads to the replicas, and a replica can take \
                  over if the primary fails. That is the site file's [database] section with \
                  kind = \"mysql\" (examples/foobar-mariadb.toml runs a local MariaDB \
                  primary and replicas). Until then, copy the SQLite file to another \
                  machine regularly."
                .into(),
        });
    }
    if let Database::Mysql(m) = &site.database {
        if m.replicas.is_empty() {
            out.push(Risk {
                severity: Severity::High,
                what: format!(
                    "The database is a single point of failure for all data, reads and writes: \
                     the primary {} has no replica.",
                    m.primary.address()
                ),
                fix: "Add replicas to [database] `replicas`: they keep a copy of every write, \
                      serve the reads, and keep the site readable when the primary is down."
                    .into(),
            });
        } else {
            out.push(Risk {
                severity: Severity::High,
                what: format!(
                    "The database primary {} is still a single point of failure for writes: \
                     while it is down, the {} replica(s) keep reads working but nobody can sign \
                     up, log in or post (503), and scaleup does not promote a replica on its own.",
                    m.primary.address(),
                    m.replicas.len()
                ),
                fix: "Keep the primary on reliable hardware and watch scaleup_db_up. To replace \
                      a lost primary, promote the most advanced replica by hand (STOP SLAVE; \
                      RESET SLAVE ALL; SET GLOBAL read_only = OFF), point the other replicas \
                      at it, and make it `primary` in the site file; or add automatic failover \
                      (MaxScale, Orchestrator) in front of the primary."
                    .into(),
            });
        }
    }

    // No TLS, or TLS that browsers are not sent to.
    let https = site.lbs.iter().any(|l| l.tls_listen.is_some());
    if !https {
        out.push(Risk {
            severity: Severity::High,
            what: format!(
                "There is no TLS: traffic between browsers and {} is plain HTTP, so passwords \
                 and session cookies can be read (and changed) on the wire by anyone on the path.",
                site.name
            ),
            fix: "Give each [[lb]] a `tls_listen` address (and each [[web]] one, for the \
                  default `tls_mode = \"tcp\"`), with the site's certificate in [tls]."
                .into(),
        });
    } else if !site.balancer.https_redirect {
        out.push(Risk {
            severity: Severity::Medium,
            what: format!(
                "Plain HTTP is still served: a browser that types {} without https:// \
                 logs in over plain HTTP until it has seen the HSTS header once.",
                site.name
            ),
            fix: "Set `https_redirect = true` in [balancer]: the plain-HTTP frontend then \
                  answers 308 to HTTPS (health checks and ACME challenges excepted)."
                .into(),
        });
    }
    if https && site.tls.files.is_none() {
        out.push(Risk {
            severity: Severity::Medium,
            what: "The certificate is self-signed: browsers warn, and users who learn to click \
                   through warnings can be fooled by anyone on the path."
                .into(),
            fix: "Put the site's certificate and key (from a CA, e.g. by ACME; the web \
                  servers serve /.well-known/acme-challenge/) in [tls] `cert` and `key`."
                .into(),
        });
    }

    // Admin listeners reachable from the network.
    for (role, node) in site.nodes() {
        let ip = node.admin.ip().to_canonical();
        if ip.is_loopback() {
            continue;
        }
        let reach = if ip.is_unspecified() {
            "every network interface"
        } else {
            "a network address"
        };
        out.push(Risk {
            severity: Severity::Medium,
            what: format!(
                "The admin listener of {} ({role}) is bound to {}, {reach} beyond loopback: \
                 anyone who can reach it can read /metrics and /status, which tell the \
                 site's layout, addresses and traffic.",
                node.name, node.admin
            ),
            fix: format!(
                "Bind admin to loopback (admin = \"127.0.0.1:{}\") or to a management network \
                 behind a firewall.",
                node.admin.port()
            ),
        });
    }

    // Nodes that receive nothing.
    for web in &site.webs {
        if !v.in_pool(&web.node.name) {
            out.push(Risk {
                severity: Severity::Low,
                what: format!(
                    "{} receives no traffic: it is not listed in balancer.servers, so no load \
                     balancer sends to it.",
                    web.node.name
                ),
                fix: format!(
                    "Add \"{}\" to balancer.servers, or remove the [[web]] node if it is not \
                     meant to serve.",
                    web.node.name
                ),
            });
        }
    }
    for app in &site.apps {
        let name = app.node.name.as_str();
        if !v.used_apps.contains(&name) {
            out.push(Risk {
                severity: Severity::Low,
                what: format!(
                    "{name} receives no traffic: no web server in the load balancers' pool \
                     proxies to it."
                ),
                fix: format!(
                    "Add \"{name}\" to the apps of a pooled web server (a web server without an \
                     apps key uses every application server), or remove the [[app]] node."
                ),
            });
        }
    }

    out.sort_by_key(|r| r.severity);
    out
}

/// What could go wrong with a load-balancer cluster: who may forge its heartbeats,
/// where its secret is kept, and whether both members share one machine.
fn cluster_risks(c: &Cluster, out: &mut Vec<Risk>) {
    match &c.secret {
        None => out.push(Risk {
            severity: Severity::High,
            what: "The load-balancer cluster's heartbeats are not authenticated: anyone on the \
                   network can forge a heartbeat and take or release the floating address, \
                   taking the site down or sending its clients elsewhere."
                .into(),
            fix: "Set `secret_env = \"SCALEUP_CLUSTER_SECRET\"` (or `secret`) in [cluster], with \
                  the same secret on both load balancers: heartbeats are then signed, and forged \
                  or replayed ones are refused."
                .into(),
        }),
        Some(Secret::Literal(_)) => out.push(Risk {
            severity: Severity::Low,
            what: "The cluster secret is written in the site file: whoever can read the file \
                   (a copy, a backup, a repository) can forge the load balancers' heartbeats."
                .into(),
            fix: "Use secret_env = \"SCALEUP_CLUSTER_SECRET\" in [cluster] instead of secret, and \
                  set that variable on both load balancers."
                .into(),
        }),
        Some(Secret::Env(_)) => {}
    }
    if let Floating::Local { address, .. } = &c.floating {
        out.push(Risk {
            severity: Severity::Medium,
            what: format!(
                "Both load balancers run on one machine: the cluster is in local mode (the \
                 floating address {address} is a port on this machine), so it survives a load \
                 balancer's process dying, but a failure of the machine takes both down."
            ),
            fix: "Run the load balancers on two servers and use mode = \"linux\" in [cluster] \
                  (with interface and address = \"IP/PREFIX:PORT\"), so the floating IP moves \
                  between the machines; or mode = \"hook\" where a cloud API moves the address."
                .into(),
        });
    }
}

// ---------------------------------------------------------------------------------
// Mermaid
// ---------------------------------------------------------------------------------

fn mermaid(v: &View) -> String {
    let site = v.site;
    let mut m = String::from("graph TD\n");
    let line = |m: &mut String, s: String| {
        m.push_str("    ");
        m.push_str(&s);
        m.push('\n');
    };

    let pair = v.pair();
    line(&mut m, format!("user([\"{}\"])", label(&["Browser"])));
    let dns_note = if pair.is_some() {
        "points at the floating address"
    } else if site.lbs.len() >= 2 {
        "lists every load balancer"
    } else {
        "points at the load balancer"
    };
    line(
        &mut m,
        format!(
            "dns[\"{}\"]",
            label(&[&format!("DNS {}", site.name), dns_note])
        ),
    );

    if let Some((c, active, _)) = pair {
        let addr = c.floating.describe();
        line(
            &mut m,
            format!(
                "vip{{{{\"{}\"}}}}",
                label(&[
                    "floating address",
                    &addr,
                    &format!(
                        "{} mode: {}",
                        mode_name(&c.floating),
                        takeover_words(&c.floating)
                    ),
                ])
            ),
        );
        let preempt = if c.preempt {
            "preempt on"
        } else {
            "preempt off"
        };
        let _ = writeln!(
            m,
            "    subgraph lb_tier [\"{}\"]",
            label(&[&format!(
                "Load-balancer cluster: one active, one passive; {preempt}"
            )])
        );
        for lb in &site.lbs {
            let state = if lb.node.name == active.node.name {
                format!("priority {}, starts active", lb.priority)
            } else {
                format!("priority {}, passive", lb.priority)
            };
            line(
                &mut m,
                format!(
                    "    {}[\"{}\"]",
                    v.id(&lb.node.name),
                    node_label(&lb.node, Some(&state))
                ),
            );
        }
        m.push_str("    end\n");
    } else {
        let title = if site.lbs.len() >= 2 {
            "Load balancers (not a cluster: no floating address)"
        } else {
            "Load balancer"
        };
        let _ = writeln!(m, "    subgraph lb_tier [\"{}\"]", label(&[title]));
        for lb in &site.lbs {
            line(
                &mut m,
                format!(
                    "    {}[\"{}\"]",
                    v.id(&lb.node.name),
                    node_label(&lb.node, None)
                ),
            );
        }
        m.push_str("    end\n");
    }

    m.push_str("    subgraph web_tier [\"Web servers: static files, reverse proxy\"]\n");
    for web in &site.webs {
        let note = (!v.in_pool(&web.node.name)).then_some("not in the pool: no traffic");
        line(
            &mut m,
            format!(
                "    {}[\"{}\"]",
                v.id(&web.node.name),
                node_label(&web.node, note)
            ),
        );
    }
    m.push_str("    end\n");

    m.push_str("    subgraph app_tier [\"Application servers: the foobar application\"]\n");
    for app in &site.apps {
        line(
            &mut m,
            format!(
                "    {}[\"{}\"]",
                v.id(&app.node.name),
                node_label(&app.node, None)
            ),
        );
    }
    m.push_str("    end\n");

    let db = db_facts(&site.database);
    let where_ = if db.embedded {
        "embedded in the application servers"
    } else {
        "database server"
    };
    line(
        &mut m,
        format!("db[(\"{}\")]", label(&[db.kind, &db.location, where_])),
    );
    for (i, replica) in db.replicas.iter().enumerate() {
        line(
            &mut m,
            format!("dbr{i}[(\"{}\")]", label(&["replica", replica])),
        );
        line(&mut m, format!("db -->|\"GTID replication\"| dbr{i}"));
    }

    line(&mut m, format!("user -->|\"{}\"| dns", browser_link(site)));
    if let Some((c, active, passive)) = pair {
        let (a, p) = (v.id(&active.node.name), v.id(&passive.node.name));
        line(
            &mut m,
            format!(
                "dns -->|\"{}\"| vip",
                label(&[&floating_record(&c.floating)])
            ),
        );
        line(&mut m, format!("vip -->|\"active\"| {a}"));
        line(
            &mut m,
            format!(
                "vip -.->|\"{}\"| {p}",
                label(&[&format!("takes over if {} fails", active.node.name)])
            ),
        );
        line(
            &mut m,
            format!("{a} <-->|\"{}\"| {p}", label(&[&heartbeat_words(c)])),
        );
    } else {
        for lb in &site.lbs {
            line(
                &mut m,
                format!(
                    "dns -->|\"{}\"| {}",
                    label(&[&dns_record(&lb.node.listen)]),
                    v.id(&lb.node.name)
                ),
            );
        }
    }
    let algorithm = site.balancer.algorithm.as_str();
    for lb in &site.lbs {
        for web in &v.pool {
            line(
                &mut m,
                format!(
                    "{} -->|\"{algorithm}\"| {}",
                    v.id(&lb.node.name),
                    v.id(&web.node.name)
                ),
            );
        }
    }
    for web in &site.webs {
        for app in &web.apps {
            line(
                &mut m,
                format!("{} -->|\"HTTP\"| {}", v.id(&web.node.name), v.id(app)),
            );
        }
    }
    for app in &site.apps {
        line(&mut m, format!("{} -->|\"SQL\"| db", v.id(&app.node.name)));
    }

    let idle: Vec<String> = site
        .webs
        .iter()
        .filter(|w| !v.in_pool(&w.node.name))
        .map(|w| v.id(&w.node.name))
        .chain(
            site.apps
                .iter()
                .filter(|a| !v.used_apps.contains(&a.node.name.as_str()))
                .map(|a| v.id(&a.node.name)),
        )
        .collect();
    if !idle.is_empty() {
        line(&mut m, "classDef idle stroke-dasharray: 5 5".into());
        line(&mut m, format!("class {} idle", idle.join(",")));
    }
    m
}

/// A Mermaid node id for `name`: ASCII letters, digits and underscores only.
fn mermaid_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if id.is_empty() {
        "node".into()
    } else {
        id
    }
}

/// A Mermaid label (for inside double quotes) made of `lines`.
fn label(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| {
            l.replace('#', "#35;")
                .replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        })
        .collect::<Vec<_>>()
        .join("<br/>")
}

fn node_label(node: &Node, note: Option<&str>) -> String {
    let listen = node.listen.to_string();
    let admin = format!("admin {}", node.admin);
    let mut lines = vec![node.name.as_str(), listen.as_str(), admin.as_str()];
    lines.extend(note);
    label(&lines)
}

// ---------------------------------------------------------------------------------
// The terminal picture
// ---------------------------------------------------------------------------------

/// How browsers reach the load balancers, as the diagrams label it.
fn browser_link(site: &Site) -> String {
    if site.lbs.iter().all(|l| l.tls_listen.is_none()) {
        return "HTTP (no TLS)".into();
    }
    match site.balancer.tls_mode {
        TlsMode::Tcp => "HTTPS (TLS passed through to the web servers)".into(),
        TlsMode::Http => "HTTPS (TLS ends at the load balancers)".into(),
    }
}

fn picture(v: &View) -> String {
    let site = v.site;
    let mut out = String::new();
    let margin = " ".repeat(INDENT);

    let _ = writeln!(out, "{margin}browser");
    arrow(&mut out, &browser_link(site));

    let mut dns = vec![format!("DNS {}", site.name)];
    if let Some((c, active, passive)) = v.pair() {
        dns.push(format!(
            "{} -> floating address",
            floating_record(&c.floating)
        ));
        tier(&mut out, "DNS entry", &[dns]);
        arrow(&mut out, "one address for the site: the floating address");

        let mut vip = vec![c.floating.describe()];
        if let Floating::Linux {
            interface,
            address,
            prefix,
            ..
        } = &c.floating
        {
            vip.push(format!("{address}/{prefix} on {interface}"));
        }
        vip.push(takeover_words(&c.floating));
        let preempt = if c.preempt { "on" } else { "off" };
        vip.push(format!("preempt {preempt}"));
        tier(
            &mut out,
            &format!("floating address ({} mode)", mode_name(&c.floating)),
            &[vip],
        );
        arrow(
            &mut out,
            &format!(
                "to the active load balancer; {} takes the address if {} fails",
                passive.node.name, active.node.name
            ),
        );

        let boxes = [active, passive].map(|l| {
            let mut b = node_box(&l.node);
            if let Some(hb) = l.heartbeat {
                b.push(format!("heartbeat {hb}"));
            }
            b.push(format!("priority {}", l.priority));
            b.push(if l.node.name == active.node.name {
                "starts active".into()
            } else {
                "passive".into()
            });
            b
        });
        let [a, p] = boxes;
        pair_tier(
            &mut out,
            "load-balancer cluster: one active, one passive",
            &a,
            &p,
            &[
                "heartbeat".to_string(),
                format!("every {}", humantime::format_duration(c.interval)),
            ],
            &[if c.secret.is_some() {
                "authenticated".into()
            } else {
                "NOT authenticated".into()
            }],
        );
    } else {
        dns.extend(
            site.lbs
                .iter()
                .map(|l| format!("{} -> {}", dns_record(&l.node.listen), l.node.name)),
        );
        tier(&mut out, "DNS entry", &[dns]);
        let lb_title = if site.lbs.len() >= 2 {
            arrow(&mut out, "each browser picks one of the addresses");
            "load balancers (not a cluster: no floating address)"
        } else {
            arrow(&mut out, "the load balancer's address");
            "load balancer"
        };
        let lb_boxes: Vec<Vec<String>> = site.lbs.iter().map(|l| node_box(&l.node)).collect();
        tier(&mut out, lb_title, &lb_boxes);
    }
    let pool: Vec<&str> = v.pool.iter().map(|w| w.node.name.as_str()).collect();
    arrow(
        &mut out,
        &format!("{} over {}", site.balancer.algorithm.as_str(), join(&pool)),
    );

    let web_boxes: Vec<Vec<String>> = site
        .webs
        .iter()
        .map(|w| {
            let mut b = node_box(&w.node);
            b.push(format!("to {}", join(&w.apps)));
            if !v.in_pool(&w.node.name) {
                b.push("not in pool: no traffic".into());
            }
            b
        })
        .collect();
    tier(
        &mut out,
        "web servers: static files, reverse proxy",
        &web_boxes,
    );
    arrow(&mut out, "HTTP, keep-alive pool");

    let app_boxes: Vec<Vec<String>> = site.apps.iter().map(|a| node_box(&a.node)).collect();
    tier(
        &mut out,
        "application servers: the foobar application",
        &app_boxes,
    );
    arrow(&mut out, "SQL");

    let db = db_facts(&site.database);
    let mut db_box = vec![db.kind.to_string(), db.location.clone()];
    if db.embedded {
        db_box.push(format!("on the disk of {}", join(&v.app_names())));
    }
    let mut boxes = vec![db_box];
    boxes.extend(
        db.replicas
            .iter()
            .map(|r| vec!["replica (reads)".to_string(), r.clone()]),
    );
    tier(
        &mut out,
        if db.replicas.is_empty() {
            "database"
        } else {
            "database: primary (writes) --GTID replication--> replicas"
        },
        &boxes,
    );
    out
}

fn node_box(node: &Node) -> Vec<String> {
    let mut b = vec![node.name.clone(), node.listen.to_string()];
    if node.bind != node.listen {
        b.push(format!("binds {}", node.bind));
    }
    b.push(format!("admin {}", node.admin));
    b
}

/// Two boxes side by side, joined by a two-way arrow labelled `above` and `below`
/// (the load-balancer pair and its heartbeat link). When they do not fit side by
/// side in [`WIDTH`], the second box goes under the first with the link between.
fn pair_tier(
    out: &mut String,
    title: &str,
    left: &[String],
    right: &[String],
    above: &[String],
    below: &[String],
) {
    let margin = " ".repeat(INDENT);
    let max_inner = WIDTH - INDENT - 4;
    let [left, right] = [left, right].map(|b| {
        b.iter()
            .flat_map(|l| fit(l, max_inner))
            .collect::<Vec<String>>()
    });
    let inner = left
        .iter()
        .chain(&right)
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let labels = above.iter().chain(below).map(|l| l.chars().count());
    let gap = (labels.max().unwrap_or(0) + 2).max(4);
    if INDENT + 2 * (inner + 4) + gap > WIDTH {
        tier(out, title, &[left]);
        let link: Vec<String> = above.iter().chain(below).cloned().collect();
        let pad = " ".repeat(INDENT + 4);
        let _ = writeln!(out, "{pad}▲");
        for l in fit(&link.join(", "), WIDTH - INDENT - 6) {
            let _ = writeln!(out, "{pad}│ {l}");
        }
        let _ = writeln!(out, "{pad}▼");
        tier(out, "", &[right]);
        return;
    }
    let _ = writeln!(out, "{margin}{title}");
    let rule = "─".repeat(inner + 2);
    // Row `arrow_row` of the boxes' text carries the arrow; the labels sit around it.
    let arrow_row = above.len();
    let height = left
        .len()
        .max(right.len())
        .max(above.len() + 1 + below.len());
    let cell = |b: &[String], i: usize| {
        let text = b.get(i).map(String::as_str).unwrap_or("");
        format!("│ {text}{} │", " ".repeat(inner - text.chars().count()))
    };
    let centred = |text: &str| {
        let n = text.chars().count();
        let before = (gap - n) / 2;
        format!(
            "{}{text}{}",
            " ".repeat(before),
            " ".repeat(gap - n - before)
        )
    };
    let blank = " ".repeat(gap);
    let _ = writeln!(out, "{margin}┌{rule}┐{blank}┌{rule}┐");
    for i in 0..height {
        let middle = if i == arrow_row {
            format!("◄{}►", "─".repeat(gap - 2))
        } else if let Some(l) = above.get(i) {
            centred(l)
        } else {
            below
                .get(i - arrow_row - 1)
                .map_or_else(|| blank.clone(), |l| centred(l))
        };
        let _ = writeln!(out, "{margin}{}{middle}{}", cell(&left, i), cell(&right, i));
    }
    let _ = writeln!(out, "{margin}└{rule}┘{blank}└{rule}┘");
}

/// A down arrow between tiers, labelled.
fn arrow(out: &mut String, text: &str) {
    let pad = " ".repeat(INDENT + 4);
    for l in fit(text, WIDTH - INDENT - 6) {
        let _ = writeln!(out, "{pad}│ {l}");
    }
    let _ = writeln!(out, "{pad}▼");
}

/// A titled row (or rows) of equal boxes, as many side by side as fit in [`WIDTH`];
/// an empty title is left out.
fn tier(out: &mut String, title: &str, boxes: &[Vec<String>]) {
    let margin = " ".repeat(INDENT);
    if !title.is_empty() {
        let _ = writeln!(out, "{margin}{title}");
    }
    let max_inner = WIDTH - INDENT - 4;
    let boxes: Vec<Vec<String>> = boxes
        .iter()
        .map(|b| b.iter().flat_map(|l| fit(l, max_inner)).collect())
        .collect();
    let inner = boxes
        .iter()
        .flatten()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let outer = inner + 4;
    let per_row = ((WIDTH - INDENT + 1) / (outer + 1)).max(1);
    let rule = "─".repeat(inner + 2);
    for row in boxes.chunks(per_row) {
        let height = row.iter().map(Vec::len).max().unwrap_or(0);
        let top: Vec<String> = row.iter().map(|_| format!("┌{rule}┐")).collect();
        let _ = writeln!(out, "{margin}{}", top.join(" "));
        for i in 0..height {
            let cells: Vec<String> = row
                .iter()
                .map(|b| {
                    let text = b.get(i).map(String::as_str).unwrap_or("");
                    let pad = inner - text.chars().count();
                    format!("│ {text}{} │", " ".repeat(pad))
                })
                .collect();
            let _ = writeln!(out, "{margin}{}", cells.join(" "));
        }
        let bottom: Vec<String> = row.iter().map(|_| format!("└{rule}┘")).collect();
        let _ = writeln!(out, "{margin}{}", bottom.join(" "));
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces where it can
/// and inside a word only when the word alone is too long.
fn fit(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        let cur_len = current.chars().count();
        if cur_len > 0 && cur_len + 1 + word.len() <= width {
            current.push(' ');
            current.extend(word);
            continue;
        }
        if cur_len > 0 {
            lines.push(std::mem::take(&mut current));
        }
        while word.len() > width {
            let rest = word.split_off(width);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        current = word.into_iter().collect();
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

/// Word-wraps prose to [`WIDTH`]: the first line starts with `first`, the rest with
/// `rest`. Words longer than a line are left whole. Ends with a newline.
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------

/// Listen, bind (when different) and admin addresses of a node.
fn node_address(node: &Node) -> String {
    let mut s = node.listen.to_string();
    if node.bind != node.listen {
        let _ = write!(s, " (binds {})", node.bind);
    }
    let _ = write!(s, ", admin {}", node.admin);
    s
}

/// The DNS record that points at `addr` (DNS carries no port).
fn dns_record(addr: &SocketAddr) -> String {
    ip_record(addr.ip())
}

/// The DNS record that points at `ip`.
fn ip_record(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("A {ip}"),
        IpAddr::V6(ip) => format!("AAAA {ip}"),
    }
}

/// The DNS record that points at the floating address, or what stands for it when
/// only the hooks know the address.
fn floating_record(f: &Floating) -> String {
    match f {
        Floating::Local { address, .. } => dns_record(address),
        Floating::Linux { address, .. } => ip_record(*address),
        Floating::Hook {
            address: Some(a), ..
        } => {
            if let Ok(addr) = a.parse::<SocketAddr>() {
                dns_record(&addr)
            } else if let Ok(ip) = a.parse::<IpAddr>() {
                ip_record(ip)
            } else {
                a.clone()
            }
        }
        Floating::Hook { address: None, .. } => "the address the hooks move".into(),
    }
}

/// The word for the cluster's mode in the site file.
fn mode_name(f: &Floating) -> &'static str {
    match f {
        Floating::Local { .. } => "local",
        Floating::Linux { .. } => "linux",
        Floating::Hook { .. } => "hook",
    }
}

/// How the floating address moves, in a few words.
fn takeover_words(f: &Floating) -> String {
    match f {
        Floating::Local { .. } => "the active one binds it".into(),
        Floating::Linux { .. } => "moved with gratuitous ARP".into(),
        Floating::Hook { .. } => "moved by the on_active/on_passive hooks".into(),
    }
}

/// The heartbeat link's label: how often, and whether it is authenticated.
fn heartbeat_words(c: &Cluster) -> String {
    let auth = if c.secret.is_some() {
        "authenticated"
    } else {
        "NOT authenticated"
    };
    format!(
        "heartbeat every {}, {auth}",
        humantime::format_duration(c.interval)
    )
}

/// About how long the passive load balancer waits for a silent active one.
fn dead_time(c: &Cluster) -> Duration {
    c.interval
        .checked_mul(c.dead_after)
        .unwrap_or(Duration::MAX)
}

fn join<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn site(text: &str) -> Site {
        crate::parse(text, "test.toml", Path::new("/tmp")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn default() -> Site {
        site(&crate::default_site(8080, "/tmp/x", "test-secret"))
    }

    /// lb1, one web server, one app server, and `extra` appended.
    fn small(extra: &str) -> String {
        format!(
            r#"[site]
name = "www.foobar.com"
state_dir = "/tmp/s"

[[lb]]
name = "lb1"
listen = "127.0.0.1:7000"
admin = "127.0.0.1:7100"

[[app]]
name = "app1"
listen = "127.0.0.1:7003"
admin = "127.0.0.1:7103"
{extra}"#
        )
    }

    const WEB1: &str = r#"
[[web]]
name = "web1"
listen = "127.0.0.1:7002"
admin = "127.0.0.1:7102"
"#;

    const WEB2: &str = r#"
[[web]]
name = "web2"
listen = "127.0.0.1:7012"
admin = "127.0.0.1:7112"
"#;

    fn has(risks: &[Risk], severity: Severity, words: &[&str]) -> bool {
        risks
            .iter()
            .any(|r| r.severity == severity && words.iter().all(|w| r.what.contains(w)))
    }

    #[test]
    fn default_site_lists_the_single_points_of_failure() {
        let e = explain(&default());
        let spof = "single point of failure";
        assert!(
            has(&e.risks, Severity::High, &["web server web1", spof]),
            "{:#?}",
            e.risks
        );
        assert!(has(
            &e.risks,
            Severity::High,
            &["application server app1", spof]
        ));
        assert!(has(&e.risks, Severity::High, &["database", spof, "SQLite"]));
        assert!(e
            .risks
            .iter()
            .any(|r| r.fix.contains("MySQL/MariaDB") && r.fix.contains("[database]")));
        // Two load balancers in a cluster: neither a SPOF nor "not a cluster".
        assert!(!has(&e.risks, Severity::High, &["load balancer lb1"]));
        assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
        assert!(!e.risks.iter().any(|r| r.what.contains("not authenticated")));
        assert!(has(
            &e.risks,
            Severity::Medium,
            &["Plain HTTP is still served"]
        ));
        assert!(has(&e.risks, Severity::Medium, &["self-signed"]));
        // Local mode: one machine carries both load balancers.
        let local = e
            .risks
            .iter()
            .find(|r| r.what.contains("Both load balancers run on one machine"))
            .expect("local-mode risk");
        assert_eq!(local.severity, Severity::Medium);
        assert!(local.fix.contains("linux"));
        // Everything is on loopback.
        assert!(!e.risks.iter().any(|r| r.what.contains("admin listener")));
        // The only low risk: the generated secret is written in the file.
        let low: Vec<&Risk> = e
            .risks
            .iter()
            .filter(|r| r.severity == Severity::Low)
            .collect();
        assert_eq!(low.len(), 1, "{low:#?}");
        assert!(low[0].what.contains("secret is written in the site file"));
        assert!(low[0].fix.contains("secret_env"));
    }

    #[test]
    fn risks_are_ordered_by_severity() {
        let e = explain(&site(
            &small(&format!("{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\"]\n"))
                .replace("127.0.0.1:7100", "0.0.0.0:7100"),
        ));
        let severities: Vec<Severity> = e.risks.iter().map(|r| r.severity).collect();
        let mut sorted = severities.clone();
        sorted.sort();
        assert_eq!(severities, sorted);
        assert!(severities.contains(&Severity::High));
        assert!(severities.contains(&Severity::Medium));
        assert!(severities.contains(&Severity::Low));
    }

    #[test]
    fn an_admin_listener_beyond_loopback_is_a_risk_naming_the_node() {
        let text = small(WEB1).replace("127.0.0.1:7102", "0.0.0.0:9000");
        let e = explain(&site(&text));
        let admin: Vec<&Risk> = e
            .risks
            .iter()
            .filter(|r| r.what.contains("admin listener"))
            .collect();
        assert_eq!(admin.len(), 1, "{admin:#?}");
        assert!(admin[0].what.contains("web1"));
        assert!(admin[0].what.contains("0.0.0.0:9000"));
        assert!(admin[0].what.contains("/metrics"));
        assert!(admin[0].fix.contains("127.0.0.1"));
        assert_eq!(admin[0].severity, Severity::Medium);

        let text = small(WEB1).replace("127.0.0.1:7103", "[::]:9001");
        let e = explain(&site(&text));
        assert!(e
            .risks
            .iter()
            .any(|r| r.what.contains("admin listener of app1")));
        let text = small(WEB1).replace("127.0.0.1:7100", "[::1]:9002");
        let e = explain(&site(&text));
        assert!(!e.risks.iter().any(|r| r.what.contains("admin listener")));
    }

    #[test]
    fn two_web_servers_remove_the_web_single_point_of_failure() {
        let text = small(&format!(
            "{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\", \"web2\"]\n"
        ));
        let e = explain(&site(&text));
        assert!(!e
            .risks
            .iter()
            .any(|r| r.what.contains("web server") && r.what.contains("single point of failure")));
        // Without a [balancer] section every web server is in the pool.
        let e = explain(&site(&small(&format!("{WEB1}{WEB2}"))));
        assert!(!e
            .risks
            .iter()
            .any(|r| r.what.contains("web server") && r.what.contains("single point of failure")));
    }

    #[test]
    fn a_web_server_outside_the_pool_receives_no_traffic() {
        let text = small(&format!("{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\"]\n"));
        let e = explain(&site(&text));
        assert!(has(&e.risks, Severity::Low, &["web2 receives no traffic"]));
        // web1 alone carries the traffic: still a single point of failure, and the
        // fix names the idle web server.
        let spof = e
            .risks
            .iter()
            .find(|r| {
                r.what
                    .contains("web server web1 is a single point of failure")
            })
            .expect("web SPOF");
        assert!(spof.fix.contains("web2"));
        assert!(e.mermaid.contains("class web_web2 idle"));
        assert!(e.picture.contains("not in pool"));
    }

    #[test]
    fn one_load_balancer_is_a_single_point_of_failure() {
        let e = explain(&site(&small(WEB1)));
        assert!(has(
            &e.risks,
            Severity::High,
            &["load balancer lb1", "single point of failure"]
        ));
        assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
    }

    #[test]
    fn two_app_servers_remove_the_app_single_point_of_failure() {
        let text = small(&format!(
            "{WEB1}\n[[app]]\nname = \"app2\"\nlisten = \"127.0.0.1:7013\"\nadmin = \"127.0.0.1:7113\"\n"
        ));
        let e = explain(&site(&text));
        assert!(!e
            .risks
            .iter()
            .any(|r| r.what.starts_with("The application server")));
        // The database is still one SQLite file.
        assert!(has(
            &e.risks,
            Severity::High,
            &["database", "single point of failure"]
        ));
    }

    #[test]
    fn a_replicated_database_shows_its_replicas_and_the_primary_risk() {
        let text = crate::default_site(8080, "/tmp/x", "test-secret");
        let head = &text[..text.find("[database]").unwrap()];
        let e = explain(&site(&format!(
            "{head}[database]\nkind = \"mysql\"\nprimary = \"mysql://f@127.0.0.1:3316/f\"\n\
             replicas = [\"mysql://f@127.0.0.1:3317/f\"]\n"
        )));
        assert!(
            e.picture.contains("replica1 127.0.0.1:3317"),
            "{}",
            e.picture
        );
        assert!(e.mermaid.contains("GTID replication"));
        assert!(has(
            &e.risks,
            Severity::High,
            &[
                "primary 127.0.0.1:3316",
                "single point of failure for writes"
            ]
        ));
        assert!(!has(&e.risks, Severity::High, &["SQLite"]));
    }

    #[test]
    fn mermaid_shows_every_node_and_the_path() {
        let s = default();
        let e = explain(&s);
        assert!(e.mermaid.starts_with("graph TD\n"));
        for (_, node) in s.nodes() {
            assert!(e.mermaid.contains(&node.name), "{} missing", node.name);
            assert!(e.mermaid.contains(&node.listen.to_string()));
        }
        for edge in [
            "user -->",
            "dns -->|\"A 127.0.0.1\"| vip",
            "vip -->|\"active\"| lb_lb1",
            "vip -.->|\"takes over if lb1 fails\"| lb_lb2",
            "lb_lb1 <-->|\"heartbeat every 100ms, authenticated\"| lb_lb2",
            "lb_lb1 -->|\"roundrobin\"| web_web1",
            "lb_lb2 -->|\"roundrobin\"| web_web1",
            "web_web1 -->|\"HTTP\"| app_app1",
            "app_app1 -->|\"SQL\"| db",
        ] {
            assert!(e.mermaid.contains(edge), "{edge} missing in\n{}", e.mermaid);
        }
        assert!(e.mermaid.contains("DNS www.foobar.com"));
        assert!(e.mermaid.contains("SQLite"));
        // DNS points at the floating address alone, not at each load balancer.
        assert!(e
            .mermaid
            .contains("vip{{\"floating address<br/>127.0.0.1:8080"));
        assert!(!e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_"));
        assert!(e.mermaid.contains("priority 150, starts active"));
        assert!(e.mermaid.contains("priority 100, passive"));
    }

    #[test]
    fn mermaid_ids_are_sanitized() {
        let text = small(WEB1)
            .replace("\"lb1\"", "\"lb-east\"")
            .replace("\"app1\"", "\"end\"");
        let e = explain(&site(&text));
        assert!(e.mermaid.contains("lb_lb_east[\""));
        assert!(e.mermaid.contains("app_end[\""));
        // Every edge's endpoints are plain identifiers.
        for line in e.mermaid.lines().filter(|l| l.contains("-->")) {
            let from = line.trim().split(' ').next().unwrap();
            let to = line.trim().rsplit(' ').next().unwrap();
            for id in [from, to] {
                assert!(
                    id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad id {id:?} in {line:?}"
                );
            }
        }
        assert_eq!(mermaid_id("a.b-c"), "a_b_c");
        assert_eq!(
            label(&["say \"hi\" #1 <b>"]),
            "say #quot;hi#quot; #35;1 #lt;b#gt;"
        );
    }

    #[test]
    fn picture_shows_every_node_name_and_address() {
        let s = default();
        let e = explain(&s);
        for (_, node) in s.nodes() {
            assert!(e.picture.contains(&node.name), "{} missing", node.name);
            assert!(e.picture.contains(&node.listen.to_string()));
            assert!(e.picture.contains(&node.admin.to_string()));
        }
        assert!(e.picture.contains("/tmp/x/foobar.db"));
        for line in e.picture.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
    }

    #[test]
    fn picture_shows_the_cluster_with_its_heartbeat_link() {
        let e = explain(&default());
        let p = &e.picture;
        assert!(p.contains("A 127.0.0.1 -> floating address"), "{p}");
        assert!(p.contains("floating address (local mode)"));
        assert!(p.contains("127.0.0.1:8080"));
        assert!(p.contains("load-balancer cluster"));
        // lb1 and lb2 side by side, the heartbeat link between them.
        let link = p.lines().find(|l| l.contains('◄')).expect("heartbeat link");
        let (left, right) = link.split_once('◄').unwrap();
        assert!(left.contains("127.0.0.1:8091"), "{link}");
        assert!(right.contains("127.0.0.1:8092"), "{link}");
        assert!(p.contains("every 100ms"));
        assert!(p.contains(" authenticated "));
        assert!(p.contains("starts active"));
        let names = p.lines().find(|l| l.contains("│ lb1")).expect("lb1 box");
        assert!(names.find("lb1") < names.find("lb2"), "{names}");
        for line in p.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
    }

    #[test]
    fn picture_stacks_a_cluster_too_wide_for_one_row() {
        let text = cluster_site("mode = \"linux\"\ninterface = \"eth0\"\naddress = \"2001:db8::100/64:80\"\nsecret_env = \"S\"\n")
            .replace("10.0.0.1:80", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:80")
            .replace("10.0.0.2:80", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:2]:80");
        let e = explain(&site(&text));
        for line in e.picture.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
        assert!(
            e.picture.contains("heartbeat, every 100ms, authenticated"),
            "{}",
            e.picture
        );
        assert!(e.picture.contains("eeee:1]:80"));
        assert!(e.picture.contains("eeee:2]:80"));
        assert!(e.mermaid.contains("dns -->|\"AAAA 2001:db8::100\"| vip"));
    }

    #[test]
    fn picture_fits_many_nodes_per_tier_in_80_columns() {
        let mut extra = String::new();
        for i in 1..=7 {
            let _ = write!(
                extra,
                "\n[[web]]\nname = \"web{i}\"\nlisten = \"10.0.0.{i}:8080\"\nadmin = \"127.0.0.1:{}\"\n",
                9000 + i
            );
        }
        let s = site(&small(&extra));
        let e = explain(&s);
        for (_, node) in s.nodes() {
            assert!(e.picture.contains(&node.name), "{} missing", node.name);
            assert!(e.picture.contains(&node.listen.to_string()));
        }
        for line in e.picture.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
        // Side by side: fewer box rows than web servers.
        let tops = e
            .picture
            .lines()
            .filter(|l| l.trim_start().starts_with('┌'))
            .count();
        assert!(tops < 7 + 4, "{}", e.picture);
    }

    #[test]
    fn elements_cover_dns_every_node_and_the_database() {
        let s = default();
        let e = explain(&s);
        let names: Vec<&str> = e.elements.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "www.foobar.com",
                "floating address",
                "lb1",
                "lb2",
                "web1",
                "app1",
                "database"
            ]
        );
        let lb1 = &e.elements[2];
        assert_eq!(lb1.kind, "load balancer");
        assert_eq!(
            lb1.address,
            "127.0.0.1:8081, admin 127.0.0.1:8091, heartbeat 127.0.0.1:8101"
        );
        assert!(lb1.why.contains("health"));
        assert!(lb1.why.contains("distributes"));
        assert!(lb1.why.contains("active"));
        assert!(e.elements[3].why.contains("passive"));
        assert!(e.elements[4].why.contains("static files"));
        assert!(e.elements[4].why.contains("reverse proxy"));
        assert!(e.elements[4].why.contains("security layer"));
        assert!(e.elements[5].why.contains("business logic"));
        assert!(e.elements[5].why.contains("no state of its own"));
        assert!(e.elements[6].why.contains("back"));
        // DNS points at the one floating address, not at each load balancer.
        let dns = &e.elements[0];
        assert_eq!(dns.kind, "DNS entry");
        assert_eq!(
            dns.address,
            "A 127.0.0.1 (the floating address 127.0.0.1:8080)"
        );
        assert!(dns.why.contains("floating address"));
        let vip = &e.elements[1];
        assert_eq!(vip.kind, "load-balancer cluster");
        assert!(vip.address.starts_with("127.0.0.1:8080, local mode"));
        for words in [
            "single point of failure",
            "about 300ms",
            "heartbeat link",
            "at once",
            "Preempt is off",
        ] {
            assert!(vip.why.contains(words), "{words} missing in {}", vip.why);
        }
        for el in &e.elements {
            assert!(!el.why.contains("  "), "double space in {:?}", el.why);
        }
    }

    #[test]
    fn render_text_has_picture_mermaid_elements_and_risks() {
        let e = explain(&default());
        let text = e.render_text();
        assert!(text.contains("```mermaid\ngraph TD\n"));
        assert!(text.contains(&e.picture));
        assert!(text.contains("Why each element is there"));
        assert!(text.contains("Risks, most serious first"));
        assert!(text.contains("[HIGH]"));
        assert!(text.contains("Fix: "));
        // Everything outside the Mermaid block (which is for machines) fits a terminal.
        let (before, after) = text.split_once("```mermaid").unwrap();
        let after = after.split_once("```").unwrap().1;
        for line in before.lines().chain(after.lines()) {
            assert!(line.chars().count() <= WIDTH, "too wide: {line}");
        }
        println!("{text}");
    }

    /// Two load balancers with heartbeats (lb2 has the higher priority), one web
    /// server, one app server, and a [cluster] section made of `cluster`.
    fn cluster_site(cluster: &str) -> String {
        format!(
            r#"[site]
name = "www.foobar.com"
state_dir = "/tmp/s"

[cluster]
{cluster}
[[lb]]
name = "lb1"
listen = "10.0.0.1:80"
admin = "127.0.0.1:7100"
heartbeat = "10.0.0.1:7200"
priority = 100

[[lb]]
name = "lb2"
listen = "10.0.0.2:80"
admin = "127.0.0.1:7101"
heartbeat = "10.0.0.2:7200"
priority = 200
{WEB1}
[[app]]
name = "app1"
listen = "127.0.0.1:7003"
admin = "127.0.0.1:7103"
"#
        )
    }

    #[test]
    fn a_cluster_without_a_secret_has_unauthenticated_heartbeats() {
        let e = explain(&site(&cluster_site(
            "mode = \"local\"\naddress = \"127.0.0.1:8000\"\n",
        )));
        let risk = e
            .risks
            .iter()
            .find(|r| r.what.contains("heartbeats are not authenticated"))
            .expect("unauthenticated risk");
        assert_eq!(risk.severity, Severity::High);
        assert!(risk.what.contains("forge a heartbeat"));
        assert!(risk.what.contains("take or release the floating address"));
        assert!(risk.fix.contains("secret_env = \"SCALEUP_CLUSTER_SECRET\""));
        assert!(risk.fix.contains("[cluster]"));
        assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
        assert!(!e
            .risks
            .iter()
            .any(|r| r.what.contains("written in the site file")));
        assert!(e
            .mermaid
            .contains("heartbeat every 100ms, NOT authenticated"));
        assert!(e.picture.contains("NOT authenticated"));
        assert!(e.elements[1].why.contains("not authenticated"));
    }

    #[test]
    fn a_linux_cluster_with_secret_env_explains_gratuitous_arp_and_preempt() {
        let e = explain(&site(&cluster_site(
            "mode = \"linux\"\ninterface = \"eth0\"\naddress = \"10.0.0.100/24:80\"\n\
             secret_env = \"SCALEUP_CLUSTER_SECRET\"\ninterval = \"200ms\"\ndead_after = 5\n\
             preempt = true\n",
        )));
        // Neither secret risk nor the one-machine risk.
        assert!(!e.risks.iter().any(|r| r.what.contains("secret")
            || r.what.contains("heartbeats")
            || r.what.contains("Both load balancers")
            || r.what.contains("not a cluster")
            || r.what.contains("load balancer lb")));
        let dns = &e.elements[0];
        assert_eq!(
            dns.address,
            "A 10.0.0.100 (the floating address 10.0.0.100:80)"
        );
        let vip = &e.elements[1];
        for words in [
            "gratuitous ARP",
            "eth0",
            "about 1s",
            "5 missed",
            "Preempt is on",
        ] {
            assert!(vip.why.contains(words), "{words} missing in {}", vip.why);
        }
        // lb2 has the higher priority: it starts active.
        assert!(vip.why.contains("lb2 (priority 200) starts active"));
        assert!(e.mermaid.contains("vip -->|\"active\"| lb_lb2"));
        assert!(e
            .mermaid
            .contains("vip -.->|\"takes over if lb2 fails\"| lb_lb1"));
        assert!(e
            .mermaid
            .contains("lb_lb2 <-->|\"heartbeat every 200ms, authenticated\"| lb_lb1"));
        assert!(e.mermaid.contains("linux mode"));
        assert!(e.picture.contains("10.0.0.100/24 on eth0"));
        assert!(e.picture.contains("preempt on"));
        let link = e.picture.lines().find(|l| l.contains('◄')).expect("link");
        assert!(
            link.split_once('◄').unwrap().0.contains("127.0.0.1:7101"),
            "{}",
            e.picture
        );
    }

    #[test]
    fn a_hook_cluster_names_its_commands() {
        let e = explain(&site(&cluster_site(
            "mode = \"hook\"\non_active = \"take-vip\"\non_passive = \"drop-vip\"\n\
             secret_env = \"S\"\n",
        )));
        assert!(e.elements[1].why.contains("`take-vip` on becoming active"));
        assert!(e.elements[1].why.contains("`drop-vip` on becoming passive"));
        assert!(e.elements[0].address.contains("the address the hooks move"));
        assert!(e.mermaid.contains("hook mode"));
        assert!(!e
            .risks
            .iter()
            .any(|r| r.what.contains("Both load balancers")));
    }

    #[test]
    fn equal_priorities_are_settled_by_name() {
        let text = cluster_site("address = \"127.0.0.1:8000\"\nsecret_env = \"S\"\n")
            .replace("priority = 200", "priority = 100");
        let e = explain(&site(&text));
        assert!(e.mermaid.contains("vip -->|\"active\"| lb_lb1"));
        assert!(e.elements[2].why.contains("name that sorts first (lb1)"));
    }

    #[test]
    fn two_load_balancers_without_a_cluster_are_not_a_cluster() {
        let text = small(&format!(
            "{WEB1}\n[[lb]]\nname = \"lb2\"\nlisten = \"127.0.0.1:7001\"\nadmin = \"127.0.0.1:7101\"\n"
        ));
        let e = explain(&site(&text));
        let risk = e
            .risks
            .iter()
            .find(|r| r.what.contains("not a cluster"))
            .expect("not-a-cluster risk");
        assert_eq!(risk.severity, Severity::Medium);
        assert!(risk.what.contains("heartbeat secret"));
        for words in [
            "[cluster]",
            "mode",
            "address",
            "secret_env",
            "heartbeat",
            "priority",
        ] {
            assert!(risk.fix.contains(words), "{words} missing in {}", risk.fix);
        }
        assert!(!risk.fix.contains("planned"));
        assert!(!has(&e.risks, Severity::High, &["load balancer lb"]));
        // DNS lists both; no floating address anywhere.
        assert!(e.elements[0].address.contains("A 127.0.0.1 (lb1)"));
        assert!(e.elements[0].address.contains("A 127.0.0.1 (lb2)"));
        assert!(e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_lb1"));
        assert!(e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_lb2"));
        assert!(!e.mermaid.contains("vip"));
        assert!(!e.picture.contains('◄'));
        for el in &e.elements {
            assert!(!el.why.contains("planned"), "{}", el.why);
        }
    }

    #[test]
    fn fit_and_wrap_keep_to_the_width() {
        assert_eq!(fit("abc def", 3), ["abc", "def"]);
        assert_eq!(fit("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(fit("", 3), [""]);
        assert_eq!(wrap("a b", "- ", "  "), "- a b\n");
        let long = "word ".repeat(40);
        for line in wrap(&long, "  ", "  ").lines() {
            assert!(line.len() <= WIDTH);
        }
    }
}
