//! The site's risks, most serious first, each with what would remove it.

use super::*;

pub(super) fn risks(v: &View) -> Vec<Risk> {
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
    let https = site.has_https();
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
                "Plain HTTP is still served (`https_redirect = false`): a browser that types \
                 {} without https:// logs in over plain HTTP, where its password and session \
                 cookie can be read, until it has seen the HSTS header once.",
                site.name
            ),
            fix: "Remove `https_redirect = false` from [balancer]: the plain-HTTP frontend then \
                  answers 308 to HTTPS (health checks and ACME challenges excepted)."
                .into(),
        });
    }
    if https && site.tls.hsts.is_none() {
        out.push(Risk {
            severity: Severity::Medium,
            what: "HTTPS responses carry no Strict-Transport-Security header ([tls] hsts = \"\"): \
                   a browser keeps trying plain HTTP first, and whoever is on the path can \
                   answer that request instead of the site (SSL stripping)."
                .into(),
            fix: "Set hsts = \"max-age=63072000\" in [tls] (or remove the empty value: that is \
                  the default) once every name of the site is served over HTTPS."
                .into(),
        });
    }
    if https {
        plain_hops(v, &mut out);
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

    // Forwarding headers believed from anyone.
    if let Some(everyone) = site.balancer.trusted_proxies.iter().find(|c| c.prefix == 0) {
        out.push(Risk {
            severity: Severity::High,
            what: format!(
                "balancer.trusted_proxies holds {everyone}, which is every address: any client \
                 can write its own X-Forwarded-For and X-Forwarded-Proto, so the access logs, \
                 per-client limits and the application see whatever address it claims."
            ),
            fix: "List only the addresses of the proxies in front of the load balancers, \
                  like trusted_proxies = [\"10.0.0.0/24\"], or none when clients connect to \
                  the load balancers directly."
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
pub(super) fn cluster_risks(c: &Cluster, out: &mut Vec<Risk>) {
    match &c.secret {
        None => out.push(Risk {
            severity: Severity::High,
            what: "The load-balancer cluster's heartbeats are not authenticated \
                   (`insecure_no_secret = true`): anyone on the network can forge a heartbeat \
                   and take or release the floating address, taking the site down or sending \
                   its clients elsewhere."
                .into(),
            fix: "Replace `insecure_no_secret = true` in [cluster] with `secret_env = \
                  \"SCALEUP_CLUSTER_SECRET\"` (or `secret`), with the same secret on both load \
                  balancers: heartbeats are then signed, and forged or replayed ones are refused."
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

/// Hops inside the site that carry requests (passwords, session cookies) as plain
/// HTTP between machines: from the load balancers to the web servers when TLS ends
/// at the load balancers (`tls_mode = "http"`), and from the web servers to the
/// application servers (always plain HTTP). A hop between two loopback addresses
/// stays on one machine and is left out.
fn plain_hops(v: &View, out: &mut Vec<Risk>) {
    let site = v.site;
    let off_machine =
        |a: &Node, b: &Node| !(a.listen.ip().is_loopback() && b.listen.ip().is_loopback());
    let mut hops: Vec<String> = Vec::new();
    if site.balancer.tls_mode == TlsMode::Http {
        for lb in &site.lbs {
            for web in &v.pool {
                if off_machine(&lb.node, &web.node) {
                    hops.push(format!("{} to {}", lb.node.name, web.node.name));
                }
            }
        }
    }
    for web in &v.pool {
        for app in web.apps.iter().filter_map(|a| site.app(a)) {
            if off_machine(&web.node, &app.node) {
                hops.push(format!("{} to {}", web.node.name, app.node.name));
            }
        }
    }
    if hops.is_empty() {
        return;
    }
    out.push(Risk {
        severity: Severity::Medium,
        what: format!(
            "Requests cross the network between tiers as plain HTTP ({}): anyone on that \
             network can read the passwords and session cookies that HTTPS protected on the \
             way in.",
            join(&hops)
        ),
        fix: format!(
            "Keep those machines on a private network of their own (a VLAN or a cloud VPC \
             that nothing else reaches){}.",
            if site.balancer.tls_mode == TlsMode::Http {
                ", or pass TLS through to the web servers with tls_mode = \"tcp\" in [balancer]"
            } else {
                ""
            }
        ),
    });
}
