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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    listen: Spanned<String>,
    bind: Option<Spanned<String>>,
    admin: Spanned<String>,
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
            })
            .collect();
        let apps: Vec<AppNode> = raw
            .app
            .iter()
            .map(|n| AppNode {
                node: self.node(&n.name, &n.listen, n.bind.as_ref(), &n.admin),
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
                access_log: match w.access_log.as_deref() {
                    Some("-") => None,
                    Some(p) => Some(absolute(&state_dir, p)),
                    None => Some(state_dir.join(format!("{}-access.log", w.name.get_ref()))),
                },
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
        }
    }

    fn tls(&mut self, raw: Option<&RawTls>, base: &Path) -> Tls {
        let hsts = match raw.and_then(|t| t.hsts.as_deref()) {
            Some("") => None,
            Some(value) => Some(value.to_string()),
            None => Some("max-age=63072000".to_string()),
        };
        let files = match raw.map(|t| (&t.cert, &t.key)) {
            Some((Some(cert), Some(key))) => Some(TlsFiles {
                cert: absolute(base, cert.get_ref()),
                key: absolute(base, key.get_ref()),
            }),
            Some((Some(one), None)) | Some((None, Some(one))) => {
                self.mistake(
                    one.span(),
                    "`cert` and `key` go together",
                    "give both the certificate chain and its private key (PEM files), \
                     or neither for a self-signed certificate",
                );
                None
            }
            _ => None,
        };
        Tls { files, hsts }
    }

    fn tls_mode(&mut self, raw: Option<&Spanned<String>>) -> TlsMode {
        let Some(raw) = raw else { return TlsMode::Tcp };
        match raw.get_ref().as_str() {
            "tcp" => TlsMode::Tcp,
            "http" => TlsMode::Http,
            other => {
                self.mistake(
                    raw.span(),
                    format!("unknown tls_mode `{other}`"),
                    "write \"tcp\" (pass TLS through to the web servers) or \"http\" \
                     (end TLS at the load balancer)",
                );
                TlsMode::Tcp
            }
        }
    }

    /// Extra response headers: the secure defaults, overridden or removed (empty
    /// value) by the site's `[web.headers]` table.
    fn headers(&mut self, raw: Option<&toml::Table>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = DEFAULT_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Some(raw) = raw else { return out };
        for (name, value) in raw {
            let lower = name.to_ascii_lowercase();
            let valid_name = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            let value = match value.as_str() {
                Some(v) if valid_name && !v.contains(['\r', '\n']) => v.to_string(),
                _ => {
                    self.mistakes.push(Mistake::at(
                        self.text,
                        self.key_span(name),
                        format!("`{name}` is not a header name with a text value"),
                        Some(
                            "write a header name (letters, digits, dashes) = \"value\", or \
                             \"\" to drop a default header"
                                .into(),
                        ),
                    ));
                    continue;
                }
            };
            out.retain(|(k, _)| *k != lower);
            if !value.is_empty() {
                out.push((lower, value));
            }
        }
        out
    }

    /// Where a key of a free-form table first appears (tables keep no spans).
    fn key_span(&self, key: &str) -> Range<usize> {
        self.text
            .find(key)
            .map(|at| at..at + key.len())
            .unwrap_or(0..0)
    }

    fn cache_rule(&mut self, raw: &RawCache) -> CacheRule {
        if !raw.pattern.get_ref().starts_with(['/', '*']) {
            self.mistake(
                raw.pattern.span(),
                format!("`{}` is not a path pattern", raw.pattern.get_ref()),
                "start the pattern with `/` or `*`, like \"/static/*\" or \"*.css\"",
            );
        }
        if raw.cache_control.get_ref().contains(['\r', '\n'])
            || raw.cache_control.get_ref().is_empty()
        {
            self.mistake(
                raw.cache_control.span(),
                "`cache_control` must be one non-empty line",
                "write a value like \"public, max-age=3600\"",
            );
        }
        CacheRule {
            pattern: raw.pattern.get_ref().clone(),
            cache_control: raw.cache_control.get_ref().clone(),
        }
    }

    /// An HTTPS frontend in `tcp` mode passes TLS to the web servers, so every web
    /// server of the pool needs a `tls_listen`.
    fn check_https(&mut self, raw: &RawSite, balancer: &Balancer) {
        let Some(frontend) = raw.lb.iter().find_map(|l| l.tls_listen.as_ref()) else {
            return;
        };
        if balancer.tls_mode != TlsMode::Tcp {
            return;
        }
        let missing: Vec<&str> = raw
            .web
            .iter()
            .filter(|w| balancer.servers.contains(w.name.get_ref()) && w.tls_listen.is_none())
            .map(|w| w.name.get_ref().as_str())
            .collect();
        if !missing.is_empty() {
            self.mistake(
                frontend.span(),
                format!(
                    "this HTTPS frontend passes TLS through (tls_mode = \"tcp\"), but web \
                     server {} has no `tls_listen`",
                    missing.join(", ")
                ),
                "add `tls_listen` to those [[web]] nodes, or set `tls_mode = \"http\"` in \
                 [balancer] to end TLS at the load balancers",
            );
        }
    }

    fn cluster(&mut self, raw: &Spanned<RawCluster>, lbs: &[RawLb]) -> Cluster {
        let span = raw.span();
        let c = raw.get_ref();
        if lbs.len() != 2 {
            self.mistake(
                span.clone(),
                format!(
                    "a cluster is two load balancers; this site has {}",
                    lbs.len()
                ),
                "keep exactly two [[lb]] nodes, or remove [cluster]",
            );
        }
        for lb in lbs {
            if lb.heartbeat.is_none() {
                self.mistake(
                    lb.name.span(),
                    format!(
                        "load balancer `{}` has no heartbeat address",
                        lb.name.get_ref()
                    ),
                    "add `heartbeat = \"IP:PORT\"` to this [[lb]]: the peer sends heartbeats there",
                );
            }
        }
        let mode = c.mode.as_ref().map_or("local", |m| m.get_ref().as_str());
        let need_address = |checker: &mut Self| {
            checker.mistake(
                span.clone(),
                format!("a `{mode}` cluster needs `address`"),
                match mode {
                    "linux" => "write the floating IP with its prefix and port, like address = \"10.0.0.100/24:80\"",
                    _ => "write the floating ip:port, like address = \"127.0.0.1:8080\"",
                },
            )
        };
        let floating = match mode {
            "local" => Floating::Local {
                address: match &c.address {
                    Some(a) => self.address(a, "address"),
                    None => {
                        need_address(self);
                        SocketAddr::from(([127, 0, 0, 1], 0))
                    }
                },
                tls_address: c
                    .tls_address
                    .as_ref()
                    .map(|a| self.address(a, "tls_address")),
            },
            "linux" => {
                let interface = c.interface.clone().unwrap_or_else(|| {
                    self.mistake(
                        span.clone(),
                        "a `linux` cluster needs `interface`",
                        "name the network interface that carries the floating IP, like interface = \"eth0\"",
                    );
                    String::new()
                });
                let (address, prefix, port) = match &c.address {
                    Some(a) => self.cidr_with_port(a),
                    None => {
                        need_address(self);
                        (std::net::IpAddr::from([0, 0, 0, 0]), 32, 0)
                    }
                };
                Floating::Linux {
                    interface,
                    address,
                    prefix,
                    port,
                }
            }
            "hook" => {
                if c.on_active.is_none() {
                    self.mistake(
                        span.clone(),
                        "a `hook` cluster needs `on_active`",
                        "write the command that moves the address here, like on_active = \"/usr/local/bin/take-vip\"",
                    );
                }
                Floating::Hook {
                    on_active: c.on_active.clone(),
                    on_passive: c.on_passive.clone(),
                    address: c.address.as_ref().map(|a| a.get_ref().clone()),
                }
            }
            other => {
                let at = c.mode.as_ref().map_or(span.clone(), Spanned::span);
                self.mistake(
                    at,
                    format!("unknown cluster mode `{other}`"),
                    "write \"local\", \"linux\" or \"hook\"",
                );
                Floating::Local {
                    address: SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls_address: None,
                }
            }
        };
        let secret = self.cluster_secret(c, span);
        Cluster {
            floating,
            secret,
            interval: self.duration(c.interval.as_ref(), Duration::from_millis(100)),
            dead_after: self.count(c.dead_after.as_ref(), 3),
            preempt: c.preempt.unwrap_or(false),
        }
    }

    /// Plain HTTP answers 308 to HTTPS whenever the site has an HTTPS frontend,
    /// unless the file says `https_redirect = false`: a session cookie must not
    /// travel in clear because a browser typed the name without `https://`.
    fn https_redirect(&mut self, raw: Option<&Spanned<bool>>, has_https: bool) -> bool {
        let Some(raw) = raw else { return has_https };
        if *raw.get_ref() && !has_https {
            self.mistake(
                raw.span(),
                "`https_redirect = true`, but the site has no HTTPS frontend to send clients to",
                "give the load balancers a `tls_listen` (or the cluster a `tls_address`), \
                 or remove `https_redirect`",
            );
        }
        *raw.get_ref()
    }

    /// One `trusted_proxies` entry: an address or an address block.
    fn cidr(&mut self, value: &Spanned<String>) -> Option<Cidr> {
        let text = value.get_ref();
        let hint = match text.parse::<Cidr>() {
            Ok(block) => return Some(block),
            Err(CidrError::HostBits(block)) => format!(
                "the bits after the first {} are not zero; write the block's first address, \"{block}\"",
                block.prefix
            ),
            Err(CidrError::Address | CidrError::Prefix) => {
                "write an IP address (\"192.0.2.1\") or a block (\"10.0.0.0/8\", \"2001:db8::/32\") \
                 of the proxies in front of the load balancers"
                    .to_string()
            }
        };
        self.mistake(
            value.span(),
            format!("`{text}` is not an address or address block"),
            hint,
        );
        None
    }

    /// Where the heartbeats' key comes from. A cluster must have one: without it
    /// anyone who can send a datagram to a heartbeat port can take the floating
    /// address. Running without is allowed only when the file says so in words
    /// (`insecure_no_secret = true`), and `explain` then lists it as a risk.
    fn cluster_secret(&mut self, c: &RawCluster, span: Range<usize>) -> Option<Secret> {
        let no_secret = c.insecure_no_secret.as_ref().filter(|v| *v.get_ref());
        match (&c.secret, &c.secret_env, no_secret) {
            (Some(_), Some(env), _) => {
                self.mistake(
                    env.span(),
                    "both `secret` and `secret_env` are set",
                    "keep one: `secret_env` keeps the secret out of the file",
                );
                None
            }
            (Some(_), None, Some(flag)) | (None, Some(_), Some(flag)) => {
                self.mistake(
                    flag.span(),
                    "`insecure_no_secret = true`, but a secret is set",
                    "remove `insecure_no_secret`: with a secret the heartbeats are signed",
                );
                None
            }
            (Some(secret), None, None) => {
                if secret.get_ref().is_empty() {
                    self.mistake(
                        secret.span(),
                        "the cluster secret is empty: heartbeats would be signed with an empty key",
                        "write a long random secret (`openssl rand -hex 32`), the same on both \
                         load balancers; better, `secret_env = \"SCALEUP_CLUSTER_SECRET\"` keeps \
                         it out of the file",
                    );
                }
                Some(Secret::Literal(secret.get_ref().clone()))
            }
            (None, Some(env), None) => {
                let name = env.get_ref();
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.mistake(
                        env.span(),
                        format!("`{name}` is not an environment variable name"),
                        "write a name of letters, digits and `_`, like \"SCALEUP_CLUSTER_SECRET\"",
                    );
                }
                Some(Secret::Env(name.clone()))
            }
            (None, None, Some(_)) => None,
            (None, None, None) => {
                self.mistake(
                    span,
                    "this cluster has no secret: anyone who can send a datagram to a heartbeat \
                     port could take the floating address",
                    "add `secret_env = \"SCALEUP_CLUSTER_SECRET\"` and export that variable with \
                     the same random value (`openssl rand -hex 32`) on both load balancers, or \
                     write `secret = \"...\"`; on a network you trust completely, \
                     `insecure_no_secret = true` runs without one",
                );
                None
            }
        }
    }

    /// `10.0.0.100/24:80`: a floating IP, its prefix length and the port clients use.
    fn cidr_with_port(&mut self, value: &Spanned<String>) -> (std::net::IpAddr, u8, u16) {
        let text = value.get_ref();
        let parsed = text.rsplit_once(':').and_then(|(cidr, port)| {
            let (ip, prefix) = cidr.split_once('/')?;
            let ip: std::net::IpAddr = ip.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (prefix <= max).then_some((ip, prefix, port.parse().ok()?))
        });
        parsed.unwrap_or_else(|| {
            self.mistake(
                value.span(),
                format!("`{text}` is not a floating address"),
                "write IP/PREFIX:PORT, like \"10.0.0.100/24:80\"",
            );
            (std::net::IpAddr::from([0, 0, 0, 0]), 32, 0)
        })
    }

    fn database(&mut self, d: &RawDatabase, state_dir: &Path) -> Database {
        let kind = d.kind.as_ref().map_or("sqlite", |k| k.get_ref().as_str());
        match kind {
            "mysql" => {
                if let Some(path) = &d.path {
                    self.mistake(
                        path.span(),
                        "`path` is for `kind = \"sqlite\"`",
                        "remove it: a MySQL/MariaDB database is named in the `primary` URL",
                    );
                }
                let primary = match &d.primary {
                    Some(url) => self.db_server(url, "primary".into()),
                    None => {
                        let span = d.kind.as_ref().map_or(0..0, |k| k.span());
                        self.mistake(
                            span,
                            "`kind = \"mysql\"` needs a `primary`",
                            "add `primary = \"mysql://USER:PASSWORD@HOST:PORT/DATABASE\"`",
                        );
                        placeholder_server()
                    }
                };
                let replicas: Vec<DbServer> = d
                    .replicas
                    .as_ref()
                    .map(|list| {
                        list.get_ref()
                            .iter()
                            .enumerate()
                            .map(|(i, url)| self.db_server(url, format!("replica{}", i + 1)))
                            .collect()
                    })
                    .unwrap_or_default();
                let managed = d.managed.as_ref().is_some_and(|m| *m.get_ref());
                if managed {
                    self.check_managed(d, &primary, &replicas);
                }
                Database::Mysql(Mysql {
                    primary,
                    replicas,
                    password_env: d.password_env.as_ref().map(|v| v.get_ref().clone()),
                    max_replica_lag: self
                        .duration(d.max_replica_lag.as_ref(), DEFAULT_MAX_REPLICA_LAG),
                    read_your_writes_timeout: self.duration(
                        d.read_your_writes_timeout.as_ref(),
                        DEFAULT_READ_YOUR_WRITES_TIMEOUT,
                    ),
                    managed,
                })
            }
            "sqlite" => {
                let mysql_only = [
                    d.primary.as_ref().map(|v| ("primary", v.span())),
                    d.replicas.as_ref().map(|v| ("replicas", v.span())),
                    d.password_env.as_ref().map(|v| ("password_env", v.span())),
                    d.max_replica_lag
                        .as_ref()
                        .map(|v| ("max_replica_lag", v.span())),
                    d.read_your_writes_timeout
                        .as_ref()
                        .map(|v| ("read_your_writes_timeout", v.span())),
                    d.managed.as_ref().map(|v| ("managed", v.span())),
                ];
                for (key, span) in mysql_only.into_iter().flatten() {
                    self.mistake(
                        span,
                        format!("`{key}` is for `kind = \"mysql\"`"),
                        "write `kind = \"mysql\"` to use a MySQL/MariaDB primary, or remove the key",
                    );
                }
                Database::Sqlite {
                    path: absolute(
                        state_dir,
                        d.path
                            .as_ref()
                            .map_or("foobar.db", |p| p.get_ref().as_str()),
                    ),
                }
            }
            other => {
                let span = d.kind.as_ref().map_or(0..0, |k| k.span());
                self.mistake(
                    span,
                    format!("unknown database kind `{other}`"),
                    "write `kind = \"sqlite\"` (embedded) or `kind = \"mysql\"` (MySQL/MariaDB primary and replicas)",
                );
                Database::Sqlite {
                    path: state_dir.join("foobar.db"),
                }
            }
        }
    }

    /// Reads one `mysql://user:password@host:port/database` URL.
    fn db_server(&mut self, value: &Spanned<String>, name: String) -> DbServer {
        const HINT: &str = "write a URL like \"mysql://foobar:secret@127.0.0.1:3306/foobar\" \
                            (the password may be left out and given by `password_env`)";
        let url = match url::Url::parse(value.get_ref()) {
            Ok(url) => url,
            Err(e) => {
                self.mistake(
                    value.span(),
                    format!("`{}` is not a URL ({e})", value.get_ref()),
                    HINT,
                );
                return placeholder_server();
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map_or_else(|_| s.to_string(), |d| d.into_owned())
        };
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let user = decode(url.username());
        let database = decode(url.path().trim_start_matches('/'));
        let problem = if !matches!(url.scheme(), "mysql" | "mariadb") {
            Some(format!("the scheme is `{}`, not `mysql`", url.scheme()))
        } else if host.is_empty() {
            Some("it names no host".to_string())
        } else if user.is_empty() {
            Some("it names no user".to_string())
        } else if database.is_empty() || database.contains('/') {
            Some("it names no database (the path after the port)".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.mistake(
                value.span(),
                format!("`{}` cannot be used: {problem}", redact(value.get_ref())),
                HINT,
            );
        }
        DbServer {
            name,
            host,
            port: url.port().unwrap_or(3306),
            user,
            password: url.password().map(decode),
            database,
        }
    }

    /// `managed = true` starts the servers on this machine, so they must be on loopback,
    /// each on its own port, and share one account and database.
    fn check_managed(&mut self, d: &RawDatabase, primary: &DbServer, replicas: &[DbServer]) {
        let urls = d
            .primary
            .iter()
            .chain(d.replicas.iter().flat_map(|r| r.get_ref().iter()));
        let mut ports = HashMap::new();
        for (server, url) in std::iter::once(primary).chain(replicas).zip(urls) {
            let loopback = server.host == "localhost"
                || server
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                self.mistake(
                    url.span(),
                    format!("`managed = true` cannot start a server on {}", server.host),
                    "use 127.0.0.1 for managed servers, or set `managed = false` and run them yourself",
                );
            }
            if let Some(other) = ports.insert(server.port, server.name.clone()) {
                self.mistake(
                    url.span(),
                    format!("port {} is already used by {other}", server.port),
                    "give each managed server a port of its own",
                );
            }
            let plain =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain(&server.user) || !plain(&server.database) {
                self.mistake(
                    url.span(),
                    "a managed server's user and database names are created by scaleup",
                    "use letters, digits and `_` only in the user and database names",
                );
            }
            if server.user != primary.user
                || server.database != primary.database
                || server.password != primary.password
            {
                self.mistake(
                    url.span(),
                    "a managed replica has the primary's user, password and database",
                    "write the same user, password and database as in `primary`",
                );
            }
        }
    }

    fn node(
        &mut self,
        name: &Spanned<String>,
        listen: &Spanned<String>,
        bind: Option<&Spanned<String>>,
        admin: &Spanned<String>,
    ) -> Node {
        let listen_addr = self.address(listen, "listen");
        Node {
            name: name.get_ref().clone(),
            listen: listen_addr,
            bind: bind.map(|b| self.address(b, "bind")).unwrap_or(listen_addr),
            admin: self.address(admin, "admin"),
        }
    }

    fn address(&mut self, value: &Spanned<String>, key: &str) -> SocketAddr {
        value.get_ref().parse().unwrap_or_else(|_| {
            self.mistake(
                value.span(),
                format!("`{}` is not an address for `{key}`", value.get_ref()),
                "write an IP address and a port, like \"127.0.0.1:8080\" or \"[::1]:8080\"",
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.mistake(
                    value.span(),
                    format!("`{}` is not a duration", value.get_ref()),
                    "write a positive duration with its unit, like \"100ms\", \"2s\" or \"1m\"",
                );
                default
            }
        }
    }

    fn count(&mut self, value: Option<&Spanned<u32>>, default: u32) -> u32 {
        match value {
            Some(v) if *v.get_ref() == 0 => {
                self.mistake(v.span(), "this count must be at least 1", "write 1 or more");
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    fn health(&mut self, raw: Option<&RawHealth>) -> HealthCheck {
        HealthCheck {
            path: self.health_path(raw.and_then(|h| h.path.as_ref())),
            interval: self.duration(
                raw.and_then(|h| h.interval.as_ref()),
                Duration::from_secs(2),
            ),
            timeout: self.duration(raw.and_then(|h| h.timeout.as_ref()), Duration::from_secs(1)),
            rise: self.count(raw.and_then(|h| h.rise.as_ref()), 2),
            fall: self.count(raw.and_then(|h| h.fall.as_ref()), 3),
        }
    }

    /// The path a health check requests: it goes into a request line as it is, so it
    /// must be a request target (`/` then URL characters), not just any text.
    fn health_path(&mut self, raw: Option<&Spanned<String>>) -> String {
        let Some(raw) = raw else {
            return "/healthz".into();
        };
        let path = raw.get_ref();
        let Some((at, problem)) = request_target_problem(path) else {
            return path.clone();
        };
        // Point at the character itself when the value is written without escapes.
        let span = raw.span();
        let span = if self.text.get(span.clone()) == Some(&format!("\"{path}\"")) {
            let start = span.start + 1 + at;
            let width = path[at..].chars().next().map_or(1, char::len_utf8);
            start..start + width
        } else {
            span
        };
        self.mistake(
            span,
            format!("`{path}` cannot be a health-check path: {problem}"),
            "write a path that starts with `/` and uses URL characters only, like \"/healthz\"; \
             write a space or another special character as %XX (a space is %20)",
        );
        "/healthz".into()
    }

    fn timeouts(&mut self, raw: Option<&RawTimeouts>) -> Timeouts {
        Timeouts {
            connect: self.duration(raw.and_then(|t| t.connect.as_ref()), Duration::from_secs(3)),
            client: self.duration(raw.and_then(|t| t.client.as_ref()), Duration::from_secs(30)),
            server: self.duration(raw.and_then(|t| t.server.as_ref()), Duration::from_secs(60)),
            keepalive: self.duration(
                raw.and_then(|t| t.keepalive.as_ref()),
                Duration::from_secs(75),
            ),
        }
    }

    fn algorithm(&mut self, raw: Option<&Spanned<String>>) -> Algorithm {
        let Some(raw) = raw else {
            return Algorithm::RoundRobin;
        };
        match raw.get_ref().as_str() {
            "roundrobin" => Algorithm::RoundRobin,
            "leastconn" => Algorithm::LeastConn,
            "source" => Algorithm::Source,
            other => {
                self.mistake(
                    raw.span(),
                    format!("unknown algorithm `{other}`"),
                    "write \"roundrobin\", \"leastconn\" or \"source\"",
                );
                Algorithm::RoundRobin
            }
        }
    }

    /// Every node name once, well formed; returns each name's role.
    fn check_names(&mut self, raw: &RawSite) -> HashMap<String, Role> {
        let names = raw
            .lb
            .iter()
            .map(|n| (Role::Lb, &n.name))
            .chain(raw.web.iter().map(|n| (Role::Web, &n.name)))
            .chain(raw.app.iter().map(|n| (Role::App, &n.name)));
        let mut seen: HashMap<String, (Role, Range<usize>)> = HashMap::new();
        for (role, name) in names {
            let value = name.get_ref();
            let well_formed = !value.is_empty()
                && value.len() <= 63
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !well_formed {
                self.mistake(
                    name.span(),
                    format!("`{value}` is not a node name"),
                    "use 1 to 63 lowercase letters, digits or dashes, like \"web1\"",
                );
            }
            if let Some((_, first)) = seen.get(value) {
                let (line, _) = crate::error::line_column(self.text, first.start);
                self.mistake(
                    name.span(),
                    format!("node name `{value}` is already used at line {line}"),
                    "give every node its own name, like \"web2\"",
                );
            } else {
                seen.insert(value.clone(), (role, name.span()));
            }
        }
        seen.into_iter().map(|(k, (role, _))| (k, role)).collect()
    }

    fn references(
        &mut self,
        list: &[Spanned<String>],
        roles: &HashMap<String, Role>,
        want: Role,
        key: &str,
    ) -> Vec<String> {
        let candidates: Vec<&str> = {
            let mut c: Vec<&str> = roles
                .iter()
                .filter(|(_, r)| **r == want)
                .map(|(n, _)| n.as_str())
                .collect();
            c.sort_unstable();
            c
        };
        let mut out = Vec::new();
        for name in list {
            match roles.get(name.get_ref()) {
                Some(role) if *role == want => out.push(name.get_ref().clone()),
                Some(role) => self.mistake(
                    name.span(),
                    format!(
                        "`{}` is a {role} node, but `{key}` lists {want} nodes",
                        name.get_ref()
                    ),
                    format!("name one of the {want} nodes: {}", candidates.join(", ")),
                ),
                None => self.mistake(
                    name.span(),
                    format!("there is no node called `{}`", name.get_ref()),
                    if candidates.is_empty() {
                        format!("add a [[{want}]] node with this name")
                    } else {
                        format!(
                            "name one of the {want} nodes ({}) or add a [[{want}]] node",
                            candidates.join(", ")
                        )
                    },
                ),
            }
        }
        if list.is_empty() {
            self.mistakes.push(Mistake::at(
                self.text,
                0..0,
                format!("`{key}` is empty"),
                Some(format!("list at least one {want} node")),
            ));
        }
        out
    }

    fn check_roles_present(&mut self, raw: &RawSite) {
        for (count, role, why) in [
            (
                raw.lb.len(),
                Role::Lb,
                "clients enter the site through a load balancer",
            ),
            (
                raw.web.len(),
                Role::Web,
                "the load balancers need a web server to send to",
            ),
            (
                raw.app.len(),
                Role::App,
                "the web servers need an application server",
            ),
        ] {
            if count == 0 {
                self.mistakes.push(Mistake::at(
                    self.text,
                    0..0,
                    format!("the site has no {role} node: {why}"),
                    Some(format!(
                        "add a [[{role}]] table with name, listen and admin addresses"
                    )),
                ));
            }
        }
    }

    /// Two nodes of one site cannot bind the same address.
    fn check_addresses(&mut self, raw: &RawSite) {
        let mut seen: HashMap<String, String> = HashMap::new();
        // In local mode the floating addresses are bound by the load balancers too.
        if let Some(cluster) = &raw.cluster {
            let c = cluster.get_ref();
            if c.mode.as_ref().is_none_or(|m| m.get_ref() == "local") {
                for a in [&c.address, &c.tls_address].into_iter().flatten() {
                    if let Ok(addr) = a.get_ref().parse::<SocketAddr>() {
                        seen.insert(addr.to_string(), "the cluster's floating address".into());
                    }
                }
            }
        }
        let all = raw
            .lb
            .iter()
            .map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, n.tls_listen.as_ref())
            })
            .chain(
                raw.lb
                    .iter()
                    .map(|n| (&n.name, [n.heartbeat.as_ref(), None, None], None)),
            )
            .chain(raw.web.iter().map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, n.tls_listen.as_ref())
            }))
            .chain(raw.app.iter().map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, None)
            }));
        for (name, addrs, tls) in all {
            // `bind` replaces `listen` as what is bound; count each address once per node.
            let bound = [addrs[1].or(addrs[0]), addrs[2], tls];
            for addr in bound.into_iter().flatten() {
                let Ok(parsed) = addr.get_ref().parse::<SocketAddr>() else {
                    continue;
                };
                if parsed.port() == 0 {
                    continue;
                }
                let key = parsed.to_string();
                if let Some(owner) = seen.get(&key) {
                    let message = format!(
                        "`{key}` is already used by {owner}; two listeners cannot share an address"
                    );
                    self.mistake(addr.span(), message, "give this listener its own port");
                } else {
                    seen.insert(key, format!("node `{}`", name.get_ref()));
                }
            }
        }
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
mod tests {
    use super::*;

    /// The default site with its `[database]` replaced by `database`.
    fn with_database(database: &str) -> String {
        let text = crate::default_site(8080, "/tmp/x", "test-secret");
        let head = &text[..text.find("[database]").unwrap()];
        format!("{head}{database}")
    }

    fn mistakes(text: &str) -> Vec<Mistake> {
        match parse(text, "test.toml", Path::new("/tmp")) {
            Err(SiteError::Invalid { mistakes, .. }) => mistakes,
            other => panic!("expected mistakes, got {other:?}"),
        }
    }

    /// The default site with `lines` added to its `[balancer]` table.
    fn with_balancer(lines: &str) -> String {
        crate::default_site(8080, "/tmp/x", "test-secret").replacen(
            "[balancer]\n",
            &format!("[balancer]\n{lines}\n"),
            1,
        )
    }

    #[test]
    fn trusted_proxies_are_addresses_and_blocks() {
        let site = parse(
            &with_balancer(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]"#),
            "test.toml",
            Path::new("/tmp"),
        )
        .unwrap();
        let list = &site.balancer.trusted_proxies;
        assert_eq!(list.len(), 3);
        assert!(list[0].contains("10.9.8.7".parse().unwrap()));
        assert!(list[1].contains("192.0.2.1".parse().unwrap()));
        assert!(!list[1].contains("192.0.2.2".parse().unwrap()));
        assert!(list[2].contains("2001:db8::1".parse().unwrap()));
        let default = parse(
            &crate::default_site(8080, "/tmp/x", "test-secret"),
            "test.toml",
            Path::new("/tmp"),
        )
        .unwrap();
        assert!(
            default.balancer.trusted_proxies.is_empty(),
            "first hop by default"
        );
    }

    #[test]
    fn bad_trusted_proxies_point_at_the_entry() {
        let text =
            with_balancer(r#"trusted_proxies = ["10.0.0.0/8", "proxy.example", "10.1.2.3/8"]"#);
        let found = mistakes(&text);
        let line = text
            .lines()
            .position(|l| l.contains("trusted_proxies"))
            .unwrap()
            + 1;
        assert_eq!(found.len(), 2, "{found:?}");
        let column = text.lines().nth(line - 1).unwrap().find("\"proxy").unwrap() + 1;
        assert_eq!((found[0].line, found[0].column), (line, column));
        assert!(found[0]
            .message
            .contains("`proxy.example` is not an address"));
        assert_eq!(found[1].line, line);
        assert!(found[1].hint.as_deref().unwrap().contains("\"10.0.0.0/8\""));
    }

    fn default_text() -> String {
        crate::default_site(8080, "/tmp/x", "test-secret")
    }

    #[test]
    fn the_per_client_cap_defaults_and_must_be_positive() {
        let site = ok(&default_text());
        assert_eq!(site.balancer.max_connections_per_client, 256);
        assert_eq!(site.webs[0].max_connections_per_client, 256);
        let site = ok(&with_balancer("max_connections_per_client = 32"));
        assert_eq!(site.balancer.max_connections_per_client, 32);
        let text = with_balancer("max_connections_per_client = 0");
        let found = mistakes(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        let (line, column) = position(&text, "max_connections_per_client = 0");
        assert_eq!(
            (found[0].line, found[0].column),
            (line, column + "max_connections_per_client = ".len())
        );
    }

    fn ok(text: &str) -> Site {
        parse(text, "test.toml", Path::new("/tmp")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The line and column of `needle`'s first byte in `text`, 1-based.
    fn position(text: &str, needle: &str) -> (usize, usize) {
        crate::error::line_column(text, text.find(needle).unwrap())
    }

    #[test]
    fn a_health_path_must_be_a_request_target() {
        let text = default_text().replace("path = \"/healthz\"", "path = \"/health z\"");
        let found = mistakes(&text);
        assert_eq!(
            found.len(),
            2,
            "both [balancer.health] and [web.health]: {found:?}"
        );
        let (line, column) = position(&text, " z\"");
        assert_eq!(
            (found[0].line, found[0].column),
            (line, column),
            "at the space"
        );
        assert!(
            found[0].message.contains("a space is not allowed"),
            "{}",
            found[0].message
        );
        let rendered = SiteError::Invalid {
            origin: "site.toml".into(),
            mistakes: found,
        }
        .to_string();
        assert!(
            rendered.contains(&format!("site.toml:{line}:{column}:")),
            "{rendered}"
        );
        assert!(
            rendered.contains("help: write a path that starts with `/`"),
            "{rendered}"
        );

        for (bad, why) in [
            ("healthz", "does not start with `/`"),
            ("/a%zz", "two hex digits"),
            ("/a#b", "fragment"),
            ("/a\\u0007", "control character"),
            ("/caf\u{e9}", "`\u{e9}`"),
            ("//evil.example/", "host name"),
            ("", "does not start with `/`"),
        ] {
            let text =
                default_text().replacen("path = \"/healthz\"", &format!("path = \"{bad}\""), 1);
            let found = mistakes(&text);
            assert!(found[0].message.contains(why), "{bad}: {found:?}");
        }
        for good in [
            "/healthz",
            "/status?full=1",
            "/a%20b",
            "/x-y_z.~!$&'()*+,;=:@",
        ] {
            let text =
                default_text().replacen("path = \"/healthz\"", &format!("path = \"{good}\""), 1);
            assert_eq!(ok(&text).balancer.health.path, good);
        }
    }

    #[test]
    fn a_cluster_needs_a_secret_or_says_it_has_none() {
        let default = default_text();
        let without = default.replace("secret = \"test-secret\"\n", "");
        let found = mistakes(&without);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("this cluster has no secret"));
        assert!(found[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("insecure_no_secret = true"));

        let empty = default.replace("secret = \"test-secret\"", "secret = \"\"");
        let found = mistakes(&empty);
        assert_eq!(position(&empty, "secret = \"\"").0, found[0].line);
        assert!(found[0].message.contains("secret is empty"));

        let empty_env = default.replace("secret = \"test-secret\"", "secret_env = \"\"");
        assert!(mistakes(&empty_env)[0]
            .message
            .contains("not an environment variable name"));

        let both = default.replace(
            "secret = \"test-secret\"",
            "secret = \"test-secret\"\ninsecure_no_secret = true",
        );
        let found = mistakes(&both);
        assert_eq!(position(&both, "insecure_no_secret").0, found[0].line);

        let said_so = default.replace("secret = \"test-secret\"", "insecure_no_secret = true");
        assert!(ok(&said_so).cluster.unwrap().secret.is_none());
        let env = default.replace("secret = \"test-secret\"", "secret_env = \"LB_SECRET\"");
        assert_eq!(
            ok(&env).cluster.unwrap().secret,
            Some(Secret::Env("LB_SECRET".into()))
        );
    }

    #[test]
    fn a_site_with_https_redirects_plain_http_unless_it_says_not_to() {
        let default = default_text();
        assert!(
            !default.lines().any(|l| l.starts_with("https_redirect")),
            "the default site relies on the default"
        );
        let site = ok(&default);
        assert!(site.has_https());
        assert!(site.balancer.https_redirect, "the default site redirects");

        let off = default.replace("[balancer]\n", "[balancer]\nhttps_redirect = false\n");
        assert!(!ok(&off).balancer.https_redirect);

        // No HTTPS frontend at all: nothing to redirect to, and saying so is a mistake.
        let plain = default
            .replace("tls_address = ", "# tls_address = ")
            .replace("tls_listen = ", "# tls_listen = ");
        let site = ok(&plain);
        assert!(!site.has_https());
        assert!(!site.balancer.https_redirect);
        let want = plain.replace("[balancer]\n", "[balancer]\nhttps_redirect = true\n");
        let found = mistakes(&want);
        assert!(found[0].message.contains("no HTTPS frontend"), "{found:?}");
        assert_eq!(position(&want, "https_redirect").0, found[0].line);
    }

    #[test]
    fn an_unknown_cluster_mode_is_a_mistake_not_a_panic() {
        let text = default_text().replace("mode = \"local\"", "mode = \"carp\"");
        let found = mistakes(&text);
        assert!(found
            .iter()
            .any(|m| m.message.contains("unknown cluster mode `carp`")));
    }

    #[test]
    fn mysql_database_with_replicas_and_defaults() {
        let text = with_database(
            "[database]\nkind = \"mysql\"\n\
             primary = \"mysql://foo:p%40ss@127.0.0.1:3316/foobar\"\n\
             replicas = [\"mysql://foo:p%40ss@127.0.0.1:3317/foobar\", \"mariadb://foo@10.0.0.3/foobar\"]\n",
        );
        let site = parse(&text, "test.toml", Path::new("/tmp")).unwrap();
        let Database::Mysql(m) = site.database else {
            panic!("not mysql")
        };
        assert_eq!(m.primary.name, "primary");
        assert_eq!(m.primary.password.as_deref(), Some("p@ss"));
        assert_eq!(m.primary.address(), "127.0.0.1:3316");
        assert_eq!(m.replicas[1].name, "replica2");
        assert_eq!(m.replicas[1].port, 3306, "the default port");
        assert_eq!(m.replicas[1].password, None);
        assert_eq!(m.max_replica_lag, Duration::from_secs(1));
        assert_eq!(m.read_your_writes_timeout, Duration::from_millis(200));
        assert!(!m.managed);
        assert!(!format!("{m:?}").contains("p@ss"), "Debug hides passwords");
    }

    #[test]
    fn mysql_mistakes_point_at_the_value() {
        let text = with_database(
            "[database]\nkind = \"mysql\"\n\
             primary = \"postgres://foo@127.0.0.1/foobar\"\n\
             replicas = [\"mysql://foo@127.0.0.1:3317/\"]\n\
             max_replica_lag = \"soon\"\n",
        );
        let found = mistakes(&text);
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].line, line_of("postgres://"));
        assert!(found[0].message.contains("scheme is `postgres`"));
        assert_eq!(found[1].line, line_of("replicas"));
        assert!(found[1].message.contains("names no database"));
        assert_eq!(found[2].line, line_of("max_replica_lag"));
    }

    #[test]
    fn mysql_needs_a_primary_and_sqlite_keys_stay_apart() {
        let found = mistakes(&with_database("[database]\nkind = \"mysql\"\n"));
        assert!(found[0].message.contains("needs a `primary`"), "{found:?}");
        let found = mistakes(&with_database(
            "[database]\nkind = \"sqlite\"\nreplicas = [\"mysql://a@b/c\"]\n",
        ));
        assert!(found[0]
            .message
            .contains("`replicas` is for `kind = \"mysql\"`"));
        let found = mistakes(&with_database("[database]\nkind = \"postgres\"\n"));
        assert!(found[0].hint.as_deref().unwrap().contains("mysql"));
    }

    #[test]
    fn managed_servers_are_local_with_their_own_ports() {
        let found = mistakes(&with_database(
            "[database]\nkind = \"mysql\"\nmanaged = true\n\
             primary = \"mysql://foo:pw@10.1.2.3:3316/foobar\"\n\
             replicas = [\"mysql://foo:pw@127.0.0.1:3316/foobar\", \"mysql://bar:pw@127.0.0.1:3318/foobar\"]\n",
        ));
        let messages: Vec<&str> = found.iter().map(|m| m.message.as_str()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("cannot start a server on 10.1.2.3")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("port 3316 is already used by primary")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("primary's user, password and database")),
            "{messages:?}"
        );
    }
}
