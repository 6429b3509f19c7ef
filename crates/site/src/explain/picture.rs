//! The plain-text picture, drawn with box characters for an 80-column terminal.

use super::*;

/// How browsers reach the load balancers, as the diagrams label it.
pub(super) fn browser_link(site: &Site) -> String {
    if site.lbs.iter().all(|l| l.tls_listen.is_none()) {
        return "HTTP (no TLS)".into();
    }
    match site.balancer.tls_mode {
        TlsMode::Tcp => "HTTPS (TLS passed through to the web servers)".into(),
        TlsMode::Http => "HTTPS (TLS ends at the load balancers)".into(),
    }
}

pub(super) fn picture(v: &View) -> String {
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

pub(super) fn node_box(node: &Node) -> Vec<String> {
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
pub(super) fn pair_tier(
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
pub(super) fn arrow(out: &mut String, text: &str) {
    let pad = " ".repeat(INDENT + 4);
    for l in fit(text, WIDTH - INDENT - 6) {
        let _ = writeln!(out, "{pad}│ {l}");
    }
    let _ = writeln!(out, "{pad}▼");
}

/// A titled row (or rows) of equal boxes, as many side by side as fit in [`WIDTH`];
/// an empty title is left out.
pub(super) fn tier(out: &mut String, title: &str, boxes: &[Vec<String>]) {
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
pub(super) fn fit(text: &str, width: usize) -> Vec<String> {
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
pub(super) fn wrap(text: &str, first: &str, rest: &str) -> String {
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
