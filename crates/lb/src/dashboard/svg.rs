//! The dashboard's picture: the site's tiers top to bottom as `scaleup explain` draws
//! them (browser, floating address, the load-balancer pair with its heartbeat, web
//! servers, application servers, database), as SVG made on the server.
//!
//! Every node is a `<g id="n-NAME">` whose class the page's script sets from the
//! events (`up`, `down`, `draining`, ...), with empty `<text>` lines it fills
//! (`s-NAME` state, `l-NAME` load, `t-NAME` latency); the database's boxes are
//! `n-db-NAME`. Colours live in `dashboard.css`: no `style` attribute, so the picture
//! passes a `default-src 'self'` policy.

use std::fmt::Write;

use super::Topology;

/// A node's box.
const BOX_W: f64 = 212.0;
/// The floating address's box, wider for its address.
const WIDE_W: f64 = 280.0;
const NODE_H: f64 = 96.0;
const DB_H: f64 = 80.0;
/// Between boxes of one row; the load-balancer pair is further apart, for the
/// heartbeat's label.
const GAP: f64 = 28.0;
const PAIR_GAP: f64 = 120.0;
/// Between rows, for the arrows.
const ROW_GAP: f64 = 54.0;
const MARGIN: f64 = 16.0;
const MIN_WIDTH: f64 = 760.0;

/// Names come from the site file: escaped as every page of the site escapes.
pub(crate) use net::pages::escape;

/// A placed box: its centre's x, its top and its height.
#[derive(Debug, Clone, Copy)]
struct Place {
    x: f64,
    y: f64,
    h: f64,
}

impl Place {
    fn top(&self) -> (f64, f64) {
        (self.x, self.y)
    }
    fn bottom(&self) -> (f64, f64) {
        (self.x, self.y + self.h)
    }
}

/// Centres of `n` boxes `gap` apart, centred in `width`.
fn row(n: usize, gap: f64, width: f64) -> Vec<f64> {
    let total = n as f64 * BOX_W + n.saturating_sub(1) as f64 * gap;
    let left = (width - total) / 2.0 + BOX_W / 2.0;
    (0..n).map(|i| left + i as f64 * (BOX_W + gap)).collect()
}

/// The picture of `t`.
pub(crate) fn render(t: &Topology) -> String {
    let pair = t.floating.is_some() && t.lbs.len() == 2;
    let widest = [
        t.lbs.len() as f64 * BOX_W
            + t.lbs.len().saturating_sub(1) as f64 * if pair { PAIR_GAP } else { GAP },
        t.webs.len() as f64 * (BOX_W + GAP) - GAP,
        t.apps.len() as f64 * (BOX_W + GAP) - GAP,
        t.database.len() as f64 * (BOX_W + GAP) - GAP,
    ]
    .into_iter()
    .fold(0.0, f64::max);
    let width = (widest + 2.0 * MARGIN).max(MIN_WIDTH);
    let centre = width / 2.0;

    let mut y = MARGIN;
    let browser = Place {
        x: centre,
        y,
        h: 30.0,
    };
    y += browser.h + ROW_GAP;
    let floating = t.floating.as_ref().map(|_| {
        let p = Place {
            x: centre,
            y,
            h: 46.0,
        };
        y += p.h + ROW_GAP;
        p
    });
    let mut place_row = |n: usize, gap: f64, h: f64| {
        let places: Vec<Place> = row(n, gap, width)
            .into_iter()
            .map(|x| Place { x, y, h })
            .collect();
        if n > 0 {
            y += h + ROW_GAP;
        }
        places
    };
    let lbs = place_row(t.lbs.len(), if pair { PAIR_GAP } else { GAP }, NODE_H);
    let webs = place_row(t.webs.len(), GAP, NODE_H);
    let apps = place_row(t.apps.len(), GAP, NODE_H);
    let dbs = place_row(t.database.len(), GAP, DB_H);
    let height = y - ROW_GAP + MARGIN;

    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="topology" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="the site's nodes, live">"#
    );
    out.push_str(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>"#,
    );

    // Arrows first, so that boxes cover their ends.
    let find = |names: &[super::Member], places: &[Place], name: &str| {
        names.iter().position(|m| m.name == name).map(|i| places[i])
    };
    match floating {
        Some(f) => {
            edge(&mut out, browser.bottom(), f.top(), "edge", None);
            for (lb, p) in t.lbs.iter().zip(&lbs) {
                let id = format!("f-{}", escape(&lb.name));
                edge(&mut out, f.bottom(), p.top(), "edge floating", Some(&id));
            }
        }
        None => {
            for p in &lbs {
                edge(&mut out, browser.bottom(), p.top(), "edge", None);
            }
        }
    }
    if pair {
        let (a, b) = (lbs[0], lbs[1]);
        let y = a.y + a.h / 2.0;
        let _ = write!(
            out,
            r#"<line class="heartbeat" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" marker-start="url(#arrow)" marker-end="url(#arrow)"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">heartbeat</text>"#,
            a.x + BOX_W / 2.0,
            b.x - BOX_W / 2.0,
            (a.x + b.x) / 2.0,
            y - 6.0
        );
    }
    for (lb, from) in t.lbs.iter().zip(&lbs) {
        for web in &lb.to {
            if let Some(to) = find(&t.webs, &webs, web) {
                edge(&mut out, from.bottom(), to.top(), "edge", None);
            }
        }
    }
    for (web, from) in t.webs.iter().zip(&webs) {
        for app in &web.to {
            if let Some(to) = find(&t.apps, &apps, app) {
                edge(&mut out, from.bottom(), to.top(), "edge", None);
            }
        }
    }
    if let Some(primary) = dbs.first() {
        for from in &apps {
            edge(&mut out, from.bottom(), primary.top(), "edge", None);
        }
        // Replication, along the row from the primary.
        for replica in dbs.iter().skip(1) {
            let y = primary.y + primary.h / 2.0;
            let _ = write!(
                out,
                r#"<path class="replication" d="M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" marker-end="url(#arrow)"/>"#,
                primary.x,
                primary.y + primary.h,
                primary.x,
                y + primary.h,
                replica.x,
                y + primary.h,
                replica.x,
                replica.y + replica.h
            );
        }
    }

    // The boxes.
    let _ = write!(
        out,
        r#"<g id="browser" class="node outside"><rect x="{:.1}" y="{:.1}" width="{BOX_W}" height="{:.1}" rx="15"/><text class="name" x="{:.1}" y="{:.1}" text-anchor="middle">browser</text></g>"#,
        browser.x - BOX_W / 2.0,
        browser.y,
        browser.h,
        browser.x,
        browser.y + 20.0
    );
    if let (Some(f), Some(addr)) = (floating, &t.floating) {
        let _ = write!(
            out,
            r#"<g id="floating" class="node outside"><rect x="{:.1}" y="{:.1}" width="{WIDE_W}" height="{:.1}" rx="6"/><text class="name" x="{:.1}" y="{:.1}" text-anchor="middle">floating address {}</text><text id="holder" class="line" x="{:.1}" y="{:.1}" text-anchor="middle">held by …</text></g>"#,
            f.x - WIDE_W / 2.0,
            f.y,
            f.h,
            f.x,
            f.y + 19.0,
            escape(addr),
            f.x,
            f.y + 37.0
        );
    }
    for (role, members, places) in [
        ("lb", &t.lbs, &lbs),
        ("web", &t.webs, &webs),
        ("app", &t.apps, &apps),
    ] {
        for (m, p) in members.iter().zip(places) {
            let name = escape(&m.name);
            let (left, top) = (p.x - BOX_W / 2.0 + 10.0, p.y);
            let _ = write!(
                out,
                r#"<g id="n-{name}" class="node {role} unknown"><title>{name}: {role}, admin {admin}</title><rect x="{:.1}" y="{top:.1}" width="{BOX_W}" height="{NODE_H}" rx="6"/><text class="name" x="{left:.1}" y="{:.1}">{name}</text><text class="role" x="{:.1}" y="{:.1}" text-anchor="end">{role}</text><text class="addr" x="{left:.1}" y="{:.1}">{listen}</text><text id="s-{name}" class="line state" x="{left:.1}" y="{:.1}">waiting…</text><text id="l-{name}" class="line" x="{left:.1}" y="{:.1}"></text><text id="t-{name}" class="line" x="{left:.1}" y="{:.1}"></text></g>"#,
                p.x - BOX_W / 2.0,
                top + 20.0,
                p.x + BOX_W / 2.0 - 10.0,
                top + 20.0,
                top + 37.0,
                top + 56.0,
                top + 72.0,
                top + 88.0,
                admin = m.admin,
                listen = m.listen,
            );
        }
    }
    for (d, p) in t.database.iter().zip(&dbs) {
        let name = escape(&d.name);
        let (left, top) = (p.x - BOX_W / 2.0 + 10.0, p.y);
        let _ = write!(
            out,
            r#"<g id="n-db-{name}" class="node db unknown"><rect x="{:.1}" y="{top:.1}" width="{BOX_W}" height="{DB_H}" rx="14"/><text class="name" x="{left:.1}" y="{:.1}">{name}</text><text class="role" x="{:.1}" y="{:.1}" text-anchor="end">{role}</text><text class="addr" x="{left:.1}" y="{:.1}">{addr}</text><text id="s-db-{name}" class="line state" x="{left:.1}" y="{:.1}">waiting…</text><text id="l-db-{name}" class="line" x="{left:.1}" y="{:.1}"></text></g>"#,
            p.x - BOX_W / 2.0,
            top + 20.0,
            p.x + BOX_W / 2.0 - 10.0,
            top + 20.0,
            top + 37.0,
            top + 56.0,
            top + 72.0,
            role = escape(&d.role),
            addr = escape(&shorten(&d.address, 30)),
        );
    }
    out.push_str("</svg>");
    out
}

/// An arrow from `a` to `b`.
fn edge(out: &mut String, a: (f64, f64), b: (f64, f64), class: &str, id: Option<&str>) {
    let id = id.map(|id| format!(r#" id="{id}""#)).unwrap_or_default();
    let _ = write!(
        out,
        r#"<line{id} class="{class}" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" marker-end="url(#arrow)"/>"#,
        a.0, a.1, b.0, b.1
    );
}

/// `text` cut to `max` characters, keeping its end (a file path's end says most).
fn shorten(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let tail: String = text.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}
