//! The Mermaid diagram (`graph TD`) of the request path, for Markdown viewers.

use super::*;

pub(super) fn mermaid(v: &View) -> String {
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
pub(super) fn mermaid_id(name: &str) -> String {
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
pub(super) fn label(lines: &[&str]) -> String {
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

pub(super) fn node_label(node: &Node, note: Option<&str>) -> String {
    let listen = node.listen.to_string();
    let admin = format!("admin {}", node.admin);
    let mut lines = vec![node.name.as_str(), listen.as_str(), admin.as_str()];
    lines.extend(note);
    label(&lines)
}
