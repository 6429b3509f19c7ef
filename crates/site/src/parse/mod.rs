//! Reading a site file: TOML in, a checked [`Site`] out, or every mistake with its
//! line and column and what to write instead.
//!
//! Parsing happens in two passes. Serde reads the raw shape (`Raw*` structs, with
//! `deny_unknown_fields` so a typo is caught, and `Spanned` wherever a later check
//! needs to point back at the text). Then [`resolve`] fills defaults and checks what
//! serde cannot see: duplicate names, references to nodes that do not exist, two
//! nodes on one address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Mistake, SiteError};
use crate::model::*;

mod cluster;
mod database;
mod nodes;
mod values;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    site: RawSiteSection,
    #[serde(default)]
    balancer: Option<RawBalancer>,
    #[serde(default)]
    lb: Vec<RawLb>,
    #[serde(default)]
    web: Vec<RawWeb>,
    #[serde(default)]
    app: Vec<RawNode>,
    #[serde(default)]
    database: Option<RawDatabase>,
    #[serde(default)]
    cluster: Option<Spanned<RawCluster>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    mode: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    tls_address: Option<Spanned<String>>,
    interface: Option<String>,
    secret: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    insecure_no_secret: Option<Spanned<bool>>,
    interval: Option<Spanned<String>>,
    dead_after: Option<Spanned<u32>>,
    preempt: Option<bool>,
    on_active: Option<String>,
    on_passive: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    hsts: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLb {
    name: Spanned<String>,
    listen: Spanned<String>,
    bind: Option<Spanned<String>>,
    admin: Spanned<String>,
    heartbeat: Option<Spanned<String>>,
    priority: Option<u8>,
    tls_listen: Option<Spanned<String>>,
    access_log: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    cache_control: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSiteSection {
    name: String,
    state_dir: Option<String>,
    admin_token_env: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    listen: Spanned<String>,
    bind: Option<Spanned<String>>,
    admin: Spanned<String>,
    weight: Option<Spanned<i64>>,
    access_log: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    name: Spanned<String>,
    listen: Spanned<String>,
    bind: Option<Spanned<String>>,
    admin: Spanned<String>,
    root: Option<String>,
    apps: Option<Vec<Spanned<String>>>,
    access_log: Option<String>,
    health: Option<RawHealth>,
    timeouts: Option<RawTimeouts>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<Spanned<u32>>,
    tls_listen: Option<Spanned<String>>,
    max_body_bytes: Option<u64>,
    headers: Option<toml::Table>,
    #[serde(default)]
    cache: Vec<RawCache>,
    weight: Option<Spanned<i64>>,
    slowstart: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalancer {
    algorithm: Option<Spanned<String>>,
    servers: Option<Vec<Spanned<String>>>,
    health: Option<RawHealth>,
    timeouts: Option<RawTimeouts>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<Spanned<u32>>,
    retries: Option<u32>,
    tls_mode: Option<Spanned<String>>,
    https_redirect: Option<Spanned<bool>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    slowstart: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Spanned<String>>,
    client: Option<Spanned<String>>,
    server: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
    tunnel: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    kind: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    primary: Option<Spanned<String>>,
    replicas: Option<Spanned<Vec<Spanned<String>>>>,
    password_env: Option<Spanned<String>>,
    max_replica_lag: Option<Spanned<String>>,
    read_your_writes_timeout: Option<Spanned<String>>,
    managed: Option<Spanned<bool>>,
    on_no_replica_ack: Option<Spanned<String>>,
    failover: Option<Spanned<String>>,
    admin_user: Option<Spanned<String>>,
    admin_password_env: Option<Spanned<String>>,
    replication_user: Option<Spanned<String>>,
    replication_password_env: Option<Spanned<String>>,
}

/// `max_replica_lag` when the site file does not say: about what a person notices.
const DEFAULT_MAX_REPLICA_LAG: Duration = Duration::from_secs(1);
/// `read_your_writes_timeout` when the site file does not say: short, because the primary
/// can always answer instead.
const DEFAULT_READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_millis(200);

/// Reads and checks the site file at `path`.
pub fn load(path: &Path) -> Result<Site, SiteError> {
    let text = std::fs::read_to_string(path).map_err(|e| SiteError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    parse(&text, &path.display().to_string(), &base)
}

/// Checks site-file `text`; `origin` names it in messages and relative paths in it
/// are taken from `base` (the file's folder).
pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Site, SiteError> {
    let raw: RawSite = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        SiteError::Invalid {
            origin: origin.to_string(),
            mistakes: vec![Mistake::at(
                text,
                span,
                e.message().to_string(),
                hint_for(e.message()),
            )],
        }
    })?;
    let mut checker = Checker {
        text,
        mistakes: Vec::new(),
    };
    let site = checker.resolve(raw, base);
    if checker.mistakes.is_empty() {
        Ok(site)
    } else {
        checker.mistakes.sort_by_key(|m| (m.line, m.column));
        Err(SiteError::Invalid {
            origin: origin.to_string(),
            mistakes: checker.mistakes,
        })
    }
}

/// A server that could not be read from the file; only seen when a mistake was recorded,
/// so it never reaches a running node.
fn placeholder_server() -> DbServer {
    DbServer {
        name: "primary".into(),
        host: String::new(),
        port: 0,
        user: String::new(),
        password: None,
        database: String::new(),
    }
}

/// The URL with its password replaced by `***`, for messages.
fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_string(),
    }
}

/// The advice that goes with one of serde's or toml's own messages.
fn hint_for(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("remove the key or fix its spelling; the keys allowed here are listed above".into())
    } else if message.starts_with("missing field") {
        Some("add the key to this table".into())
    } else if message.contains("duplicate key") {
        Some("each key may appear once in a table".into())
    } else {
        None
    }
}

struct Checker<'a> {
    text: &'a str,
    mistakes: Vec<Mistake>,
}

impl Checker<'_> {
    fn mistake(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        self.mistakes.push(Mistake::at(
            self.text,
            span,
            message.into(),
            Some(hint.into()),
        ));
    }

    fn resolve(&mut self, raw: RawSite, base: &Path) -> Site {
        let state_dir = absolute(base, raw.site.state_dir.as_deref().unwrap_or(".scaleup"));

        let lbs: Vec<LbNode> = raw
            .lb
            .iter()
            .map(|n| LbNode {
                node: self.node(&n.name, &n.listen, n.bind.as_ref(), &n.admin),
                heartbeat: n.heartbeat.as_ref().map(|h| self.address(h, "heartbeat")),
                priority: n.priority.unwrap_or(100),
                tls_listen: n.tls_listen.as_ref().map(|a| self.address(a, "tls_listen")),
                access_log: access_log(&state_dir, n.access_log.as_deref(), n.name.get_ref()),
            })
            .collect();
        let apps: Vec<AppNode> = raw
            .app
            .iter()
            .map(|n| AppNode {
                node: self.node(&n.name, &n.listen, n.bind.as_ref(), &n.admin),
                weight: self.weight(n.weight.as_ref()),
                access_log: access_log(&state_dir, n.access_log.as_deref(), n.name.get_ref()),
            })
            .collect();

        let roles = self.check_names(&raw);
        let all_apps: Vec<String> = apps.iter().map(|a| a.node.name.clone()).collect();
        let webs: Vec<WebNode> = raw
            .web
            .iter()
            .map(|w| WebNode {
                node: self.node(&w.name, &w.listen, w.bind.as_ref(), &w.admin),
                root: w.root.as_deref().map(|r| absolute(base, r)),
                apps: match &w.apps {
                    Some(list) => self.references(list, &roles, Role::App, "apps"),
                    None => all_apps.clone(),
                },
                access_log: access_log(&state_dir, w.access_log.as_deref(), w.name.get_ref()),
                health: self.health(w.health.as_ref()),
                timeouts: self.timeouts(w.timeouts.as_ref()),
                max_connections: w.max_connections.unwrap_or(10_000),
                max_connections_per_client: self.count(
                    w.max_connections_per_client.as_ref(),
                    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                ),
                tls_listen: w.tls_listen.as_ref().map(|a| self.address(a, "tls_listen")),
                max_body_bytes: w.max_body_bytes.unwrap_or(1024 * 1024),
                headers: self.headers(w.headers.as_ref()),
                cache: w.cache.iter().map(|c| self.cache_rule(c)).collect(),
                weight: self.weight(w.weight.as_ref()),
                slowstart: self.slowstart(w.slowstart.as_ref()),
            })
            .collect();

        let all_webs: Vec<String> = webs.iter().map(|w| w.node.name.clone()).collect();
        let has_https = has_https_frontend(&raw);
        let balancer = match &raw.balancer {
            None => Balancer {
                algorithm: Algorithm::RoundRobin,
                servers: all_webs,
                health: self.health(None),
                timeouts: self.timeouts(None),
                max_connections: 10_000,
                max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                retries: 1,
                tls_mode: TlsMode::Tcp,
                https_redirect: has_https,
                trusted_proxies: Vec::new(),
                slowstart: DEFAULT_SLOWSTART,
            },
            Some(b) => Balancer {
                algorithm: self.algorithm(b.algorithm.as_ref()),
                servers: match &b.servers {
                    Some(list) => self.references(list, &roles, Role::Web, "servers"),
                    None => all_webs,
                },
                health: self.health(b.health.as_ref()),
                timeouts: self.timeouts(b.timeouts.as_ref()),
                max_connections: b.max_connections.unwrap_or(10_000),
                max_connections_per_client: self.count(
                    b.max_connections_per_client.as_ref(),
                    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                ),
                retries: b.retries.unwrap_or(1),
                tls_mode: self.tls_mode(b.tls_mode.as_ref()),
                https_redirect: self.https_redirect(b.https_redirect.as_ref(), has_https),
                trusted_proxies: b
                    .trusted_proxies
                    .iter()
                    .flatten()
                    .filter_map(|entry| self.cidr(entry))
                    .collect(),
                slowstart: self.slowstart(b.slowstart.as_ref()),
            },
        };

        let database = match &raw.database {
            None => Database::Sqlite {
                path: state_dir.join("foobar.db"),
            },
            Some(d) => self.database(d, &state_dir),
        };

        let cluster = raw.cluster.as_ref().map(|c| self.cluster(c, &raw.lb));

        let tls = self.tls(raw.tls.as_ref(), base);
        let admin_token_env = raw
            .site
            .admin_token_env
            .as_ref()
            .and_then(|v| self.env_name(v, "admin_token_env"));
        let log_format = self.log_format(raw.site.log_format.as_ref());
        self.check_roles_present(&raw);
        self.check_addresses(&raw);
        self.check_https(&raw, &balancer);

        Site {
            name: raw.site.name,
            state_dir,
            balancer,
            lbs,
            webs,
            apps,
            database,
            cluster,
            tls,
            admin_token_env,
            log_format,
        }
    }
}

/// A node's access log: `"-"` is standard output, a relative path is under the
/// state directory, and none is `STATE/NAME-access.log` (where `scaleup trace`
/// looks).
fn access_log(state_dir: &Path, raw: Option<&str>, name: &str) -> Option<PathBuf> {
    match raw {
        Some("-") => None,
        Some(p) => Some(absolute(state_dir, p)),
        None => Some(state_dir.join(format!("{name}-access.log"))),
    }
}

/// Whether the site has an HTTPS frontend: a load balancer's `tls_listen`, or the
/// local cluster's floating `tls_address`.
fn has_https_frontend(raw: &RawSite) -> bool {
    raw.lb.iter().any(|l| l.tls_listen.is_some())
        || raw.cluster.as_ref().is_some_and(|c| {
            let c = c.get_ref();
            c.tls_address.is_some() && c.mode.as_ref().is_none_or(|m| m.get_ref() == "local")
        })
}

/// Why `path` cannot be sent as an origin-form request target (`/path?query`, RFC
/// 9112 section 3.2.1), with the byte offset of the trouble; `None` when it can.
fn request_target_problem(path: &str) -> Option<(usize, String)> {
    if !path.starts_with('/') {
        return Some((0, "it does not start with `/`".into()));
    }
    if path.starts_with("//") {
        return Some((0, "it starts with `//`, which reads as a host name".into()));
    }
    let bytes = path.as_bytes();
    for (i, c) in path.char_indices() {
        let allowed = c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?".contains(c);
        if allowed {
            continue;
        }
        if c == '%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if hex(i + 1) && hex(i + 2) {
                continue;
            }
            return Some((i, "`%` must be followed by two hex digits".into()));
        }
        let what = match c {
            ' ' => "a space".to_string(),
            '#' => "`#` (a fragment is never sent to a server)".to_string(),
            c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
            c => format!("`{c}`"),
        };
        return Some((i, format!("{what} is not allowed in a request target")));
    }
    None
}

fn absolute(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests;
