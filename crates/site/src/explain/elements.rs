//! Every element of the site, with why it is there.

use super::*;

pub(super) fn elements(v: &View) -> Vec<Element> {
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
pub(super) fn cluster_element(c: &Cluster, active: &LbNode, passive: &LbNode) -> Element {
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

pub(super) fn algorithm_words(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin => "each in turn",
        Algorithm::LeastConn => "to the one with the fewest requests in flight",
        Algorithm::Source => "by a hash of the client's address, so a client keeps its server",
    }
}
