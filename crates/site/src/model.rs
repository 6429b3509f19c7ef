//! The resolved site: what every node needs to know, with defaults filled in and
//! every reference checked. Built by [`crate::parse`]; nothing here touches the file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A whole site: every node of `www.foobar.com` and how they connect.
#[derive(Debug, Clone)]
pub struct Site {
    /// The public name browsers use (`www.foobar.com`); shown in pages and diagrams.
    pub name: String,
    /// Where nodes keep their files (database, logs, generated assets). Absolute.
    pub state_dir: PathBuf,
    /// What every load balancer does; the load balancers of a site are interchangeable.
    pub balancer: Balancer,
    /// The load balancers, in file order.
    pub lbs: Vec<LbNode>,
    /// The web servers, in file order.
    pub webs: Vec<WebNode>,
    /// The application servers, in file order.
    pub apps: Vec<AppNode>,
    /// Where the application keeps its data.
    pub database: Database,
    /// The load balancers' floating address, when they form a cluster.
    pub cluster: Option<Cluster>,
    /// The site's certificate and HTTPS policy, shared by every node that speaks TLS.
    pub tls: Tls,
    /// The environment variable holding the token that admin writes (drain, ready)
    /// must carry as `Authorization: Bearer TOKEN`. `None`: no node accepts a write.
    pub admin_token_env: Option<String>,
    /// How every node writes its access log (`log_format` in `[site]`).
    pub log_format: LogFormat,
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// nginx's `combined` line with `rid=`, `rt=` (and `trace=`) appended: what
    /// people and `grep` read.
    #[default]
    Combined,
    /// One JSON object per line, what log shippers (Vector, Fluent Bit, Filebeat)
    /// read without a parsing rule.
    Json,
}

impl LogFormat {
    /// The word used in site files.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Combined => "combined",
            LogFormat::Json => "json",
        }
    }
}

/// Server weights are 1..=`MAX_WEIGHT` (HAProxy's range, without its 0: a server
/// taken out is drained, which says so on `/status`, not weighted to nothing).
pub const MAX_WEIGHT: u32 = 256;

/// The weight of a server the site file gives none: every server alike.
pub const DEFAULT_WEIGHT: u32 = 1;

/// How long a server's share of traffic ramps up after `scaleup ready` or after it
/// comes back up, when the site file does not say.
pub const DEFAULT_SLOWSTART: Duration = Duration::from_secs(10);

/// The load-balancer cluster: one floating address, held by the active node.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// How the address moves between the two load balancers.
    pub floating: Floating,
    /// Where the shared secret comes from; `None` only when the site file says
    /// `insecure_no_secret = true`, which leaves heartbeats unauthenticated (and
    /// `explain` says so).
    pub secret: Option<Secret>,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Missed heartbeats before the peer counts as dead.
    pub dead_after: u32,
    /// Whether the higher-priority node takes the address back when it returns.
    pub preempt: bool,
}

/// How the floating address moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Floating {
    /// A loopback `ip:port` the active node binds (one machine: `scaleup up`), and
    /// another for HTTPS.
    Local {
        address: SocketAddr,
        tls_address: Option<SocketAddr>,
    },
    /// An IP added to `interface` and announced with gratuitous ARP.
    Linux {
        interface: String,
        address: std::net::IpAddr,
        prefix: u8,
        /// The port clients use on the floating IP.
        port: u16,
    },
    /// User commands run on becoming active or passive (cloud APIs).
    Hook {
        on_active: Option<String>,
        on_passive: Option<String>,
        /// What clients use, for messages only (`None`: unknown to scaleup).
        address: Option<String>,
    },
}

/// A secret from the site file or, better, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the site file.
    Literal(String),
    /// The value of this environment variable when the node starts.
    Env(String),
}

impl Secret {
    /// The secret's bytes, or what to do when the variable is missing.
    pub fn resolve(&self) -> Result<Vec<u8>, String> {
        match self {
            Secret::Literal(s) => Ok(s.clone().into_bytes()),
            Secret::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(value.into_bytes()),
                Ok(_) => Err(format!(
                    "the cluster secret comes from ${name}, which is empty: export {name}=... \
                     (a long random value, the same on both load balancers)"
                )),
                Err(_) => Err(format!(
                    "the cluster secret comes from ${name}, which is not set: export {name}=... \
                     on both load balancers"
                )),
            },
        }
    }
}

impl Floating {
    /// Where clients reach the site through the cluster, for messages.
    pub fn describe(&self) -> String {
        match self {
            Floating::Local { address, .. } => address.to_string(),
            Floating::Linux { address, port, .. } => {
                std::net::SocketAddr::new(*address, *port).to_string()
            }
            Floating::Hook { address, .. } => address
                .clone()
                .unwrap_or_else(|| "(set by the hooks)".into()),
        }
    }
}

/// The site's certificate: one name (`www.foobar.com`), so one certificate, used by
/// whichever node ends TLS (the web servers, or the load balancers in `http` mode).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificate chain and private key (PEM files), when the site has its own;
    /// `None` means a self-signed certificate for the site's name, generated once into
    /// the state directory so browsers can be told to trust one stable certificate.
    pub files: Option<TlsFiles>,
    /// The `Strict-Transport-Security` value sent on HTTPS responses; `None` sends none
    /// (a site still trying HTTPS out should not pin browsers to it for a year).
    pub hsts: Option<String>,
}

/// A certificate chain and its key, as PEM files (absolute paths).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the load balancers' HTTPS frontend ends TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Pass TLS through untouched to a web server's `tls_listen`, with the client's
    /// address in a PROXY protocol v2 header: keys stay on the web servers.
    Tcp,
    /// End TLS at the load balancer and forward plain HTTP with
    /// `X-Forwarded-Proto: https`: the load balancer can see and route requests.
    Http,
}

impl TlsMode {
    /// The word used in site files.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Tcp => "tcp",
            TlsMode::Http => "http",
        }
    }
}

/// What a node is for. A node learns its role from its name in the site file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Spreads client connections over the web servers.
    Lb,
    /// Serves static files and proxies the rest to the application servers.
    Web,
    /// Runs the foobar application.
    App,
}

impl Role {
    /// The word used for this role in site files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lb => "lb",
            Role::Web => "web",
            Role::App => "app",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every node has: a name, where others reach it, where it listens, its admin port.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique across the site; `scaleup run NAME` picks the node by it.
    pub name: String,
    /// Where the other nodes reach this one.
    pub listen: SocketAddr,
    /// What the node binds (defaults to `listen`; `0.0.0.0:80` behind NAT, say).
    pub bind: SocketAddr,
    /// The admin listener: `/healthz`, `/metrics`, `/status`.
    pub admin: SocketAddr,
}

/// A load balancer node.
#[derive(Debug, Clone)]
pub struct LbNode {
    pub node: Node,
    /// Where it exchanges heartbeats with its peer (UDP and TCP), in a cluster.
    pub heartbeat: Option<SocketAddr>,
    /// Its priority in the cluster's election (higher wins; default 100).
    pub priority: u8,
    /// The HTTPS frontend, if any (its mode is the balancer's `tls_mode`).
    pub tls_listen: Option<SocketAddr>,
    /// Where its access log goes (one line per HTTP request, as the web servers');
    /// `None` means standard output. Requests relayed as TLS in `tcp` mode are
    /// logged by the web server only: the load balancer never sees them.
    pub access_log: Option<PathBuf>,
}

/// A web server node.
#[derive(Debug, Clone)]
pub struct WebNode {
    pub node: Node,
    /// The document root; `None` means "the built-in foobar assets", which the
    /// binary writes into the state directory before the node starts.
    pub root: Option<PathBuf>,
    /// Names of the application servers this web server proxies to.
    pub apps: Vec<String>,
    /// Where the access log goes; `None` means standard output.
    pub access_log: Option<PathBuf>,
    /// How the web server checks its application servers.
    pub health: HealthCheck,
    /// Limits on clients and on the application servers.
    pub timeouts: Timeouts,
    /// Most client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most of those from one client address (an IPv6 /64 counts as one), so that one
    /// host cannot take every place; more are closed as soon as they are accepted.
    pub max_connections_per_client: u32,
    /// The HTTPS listener (TLS ended here; PROXY protocol v2 accepted from the load
    /// balancers), if any.
    pub tls_listen: Option<SocketAddr>,
    /// Largest request body, in bytes; a larger declared `Content-Length` gets 413.
    pub max_body_bytes: u64,
    /// Headers added to every response that lacks them (security headers by
    /// default); a header configured with an empty value is not added.
    pub headers: Vec<(String, String)>,
    /// `Cache-Control` for static files, by path pattern; the first match wins.
    pub cache: Vec<CacheRule>,
    /// Its share of the load balancers' traffic, relative to the other web servers
    /// (1..=256, default 1).
    pub weight: u32,
    /// How long an application server's share of this web server's traffic ramps
    /// up from nothing to its weight after it is made ready or comes back up
    /// (HAProxy's `slowstart`); zero gives the whole share at once.
    pub slowstart: Duration,
}

/// A `Cache-Control` value for the static files whose path matches a pattern.
#[derive(Debug, Clone)]
pub struct CacheRule {
    /// A URL path pattern where `*` stands for any characters, `/` included:
    /// `"/static/*"`, `"*.css"`.
    pub pattern: String,
    /// The `Cache-Control` value sent for matching files (and their 304s).
    pub cache_control: String,
}

impl CacheRule {
    /// Whether `path` matches this rule's pattern.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.pattern.as_bytes(), path.as_bytes())
    }
}

/// `*`-only glob matching, iterative with one backtrack point (linear enough for
/// short patterns, and no recursion a hostile path could deepen).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The default cap on connections from one client address: far above what a
/// browser opens (6 per host over HTTP/1.1, 1 over HTTP/2), far below the budget.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 256;

/// The headers a web server adds by default: what the foobar pages satisfy (no
/// inline script or style), and what keeps a static file from being framed or
/// sniffed into something else.
pub const DEFAULT_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
];

/// An application server node.
#[derive(Debug, Clone)]
pub struct AppNode {
    pub node: Node,
    /// Its share of the web servers' traffic, relative to the other application
    /// servers (1..=256, default 1).
    pub weight: u32,
    /// Where its access log goes; `None` means standard output.
    pub access_log: Option<PathBuf>,
}

/// The load balancers' shared settings (HAProxy's `defaults` + `backend`).
#[derive(Debug, Clone)]
pub struct Balancer {
    /// How a server is picked for a new request.
    pub algorithm: Algorithm,
    /// Names of the web servers in the pool.
    pub servers: Vec<String>,
    /// How servers are checked.
    pub health: HealthCheck,
    /// Limits on clients and servers.
    pub timeouts: Timeouts,
    /// Most client connections served at once per load balancer.
    pub max_connections: usize,
    /// Most of those from one client address (an IPv6 /64 counts as one), so that one
    /// host cannot take every place; more are closed as soon as they are accepted.
    pub max_connections_per_client: u32,
    /// How many other servers an idempotent request that failed to connect is retried on.
    pub retries: u32,
    /// Where the HTTPS frontends (`tls_listen` of each load balancer) end TLS.
    pub tls_mode: TlsMode,
    /// Whether the plain-HTTP frontend answers 308 to the HTTPS one (except
    /// `/healthz` and `/.well-known/acme-challenge/`). True by default when the site
    /// has an HTTPS frontend ([`Site::has_https`]); only `https_redirect = false`
    /// turns it off, and `explain` lists that as a risk.
    pub https_redirect: bool,
    /// Proxies in front of the load balancers (another load balancer, a CDN) whose
    /// `X-Forwarded-For` and `X-Forwarded-Proto` the load balancers keep. Empty by
    /// default: the load balancer is the first hop, so whatever forwarding headers a
    /// client sends are its own inventions and are replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// How long a web server's share of traffic ramps up from nothing to its weight
    /// after it is made ready or comes back up (HAProxy's `slowstart`), so a cold
    /// server is not handed its full share at once; zero gives it at once.
    pub slowstart: Duration,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a single address is a block of
/// one (`/32` or `/128`). Host bits below the prefix are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The first address of the block.
    pub addr: IpAddr,
    /// How many leading bits of `addr` a member shares (at most 32 for IPv4, 128 for IPv6).
    pub prefix: u8,
}

/// Why a text is not a [`Cidr`]; the site file turns it into a message with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// Not an IP address (before the `/`).
    Address,
    /// The prefix is not a number, or longer than the address.
    Prefix,
    /// Bits are set below the prefix; the block meant is given.
    HostBits(Cidr),
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS` or `ADDRESS/PREFIX`, like `192.0.2.1`, `10.0.0.0/8`, `fd00::/8`.
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| CidrError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(CidrError::Prefix),
                }
            }
            Some(_) => return Err(CidrError::Prefix),
        };
        let block = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if block.addr != addr {
            return Err(CidrError::HostBits(block));
        }
        Ok(block)
    }
}

/// `addr` with every bit below `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How a pool member is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each server in turn: even spread when requests cost the same.
    RoundRobin,
    /// The server with the fewest requests in flight: best when requests vary in cost.
    LeastConn,
    /// A hash of the client address: the same client lands on the same server.
    Source,
}

impl Algorithm {
    /// The word used in site files.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "roundrobin",
            Algorithm::LeastConn => "leastconn",
            Algorithm::Source => "source",
        }
    }
}

/// Active health checking, as HAProxy does it: `rise` good checks in a row bring a
/// server in, `fall` bad ones take it out. A refused connection takes it out at once.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path requested with `GET`; any 2xx or 3xx is good.
    pub path: String,
    /// Time between checks of one server.
    pub interval: Duration,
    /// How long one check may take before it counts as bad.
    pub timeout: Duration,
    /// Good checks in a row before a down server is used again.
    pub rise: u32,
    /// Bad checks in a row before an up server is taken out.
    pub fall: u32,
}

/// Timeouts, named as HAProxy names them.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Connecting to an upstream server.
    pub connect: Duration,
    /// A client sending its request head, and one not reading an answer (a write
    /// with no byte taken for this long ends the connection).
    pub client: Duration,
    /// An upstream server sending its response head.
    pub server: Duration,
    /// A kept-alive client connection with no request started, before it is closed.
    pub keepalive: Duration,
    /// An upgraded connection (a WebSocket) with no byte in either direction, before
    /// both sides are closed: HAProxy's `timeout tunnel`, long because a quiet chat or
    /// live feed is still wanted.
    pub tunnel: Duration,
    /// How long a stopping process (SIGTERM, or the old process of an upgrade) lets
    /// its open connections finish, WebSockets included, before it closes them.
    pub drain: Duration,
}

/// Where the foobar data lives.
#[derive(Debug, Clone)]
pub enum Database {
    /// An SQLite file on the application server's disk (absolute path).
    Sqlite { path: PathBuf },
    /// A MySQL/MariaDB primary with GTID replicas: writes to the primary, reads spread over
    /// the replicas.
    Mysql(Mysql),
}

/// `kind = "mysql"`: the replicated database tier.
#[derive(Debug, Clone)]
pub struct Mysql {
    /// Takes every write; named `primary` in messages and metrics.
    pub primary: DbServer,
    /// Serve reads; named `replica1`, `replica2`, ... in file order.
    pub replicas: Vec<DbServer>,
    /// When set, the password comes from this environment variable (read when a node
    /// starts), so the site file can be shared without the secret in it.
    pub password_env: Option<String>,
    /// A replica further behind than this is skipped for reads until it catches up.
    pub max_replica_lag: Duration,
    /// How long a read waits for a replica to apply the reader's own last write before it
    /// goes to the primary instead.
    pub read_your_writes_timeout: Duration,
    /// `scaleup up` starts (and stops) a local MariaDB primary and replicas on these
    /// addresses, with their data under the state directory.
    pub managed: bool,
    /// What a write does when no replica acknowledges it under semi-synchronous
    /// replication (`on_no_replica_ack`).
    pub on_no_replica_ack: ReplicaAck,
    /// Whether the active load balancer promotes a replica by itself when the primary
    /// is gone (`failover = "auto"`, the default), or a person does (`"manual"`:
    /// `scaleup db switchover`). The managed servers are administered over their Unix
    /// sockets; a site's own servers with [`Mysql::accounts`].
    pub auto_failover: bool,
    /// How the load balancers (and `scaleup db switchover`) administer a site's own
    /// servers: without it, only the managed ones fail over.
    pub accounts: Option<Box<FailoverAccounts>>,
}

/// The accounts that move the primary of a site's own MariaDB servers, their passwords
/// read from the environment when a node starts (the site file holds no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverAccounts {
    /// Fences, promotes and re-points servers (`SUPER`, or `READ_ONLY ADMIN`,
    /// `REPLICATION SLAVE ADMIN`, `BINLOG ADMIN` and `REPLICATION CLIENT`), from the
    /// load balancers' addresses.
    pub admin_user: String,
    pub admin_password_env: String,
    /// What replicas log in as to read the primary's binary log (`REPLICATION SLAVE`).
    pub replication_user: String,
    pub replication_password_env: String,
}

/// `on_no_replica_ack`: the price of durability when every replica is down or behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplicaAck {
    /// `"wait"`: a write is acknowledged only once a replica has it, so a failover never
    /// loses one; with no replica up the site takes no writes.
    Wait,
    /// `"fallback"` (the default): after a second without an acknowledgement the primary
    /// goes on alone; writes made then are lost if it dies before a replica has them.
    #[default]
    Fallback,
}

/// One MySQL/MariaDB server, from a `mysql://user:password@host:port/database` URL.
#[derive(Clone)]
pub struct DbServer {
    /// `primary`, `replica1`, ...: how messages, `/status` and metrics name it.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// From the URL; `None` when the URL has none (then `password_env` supplies it).
    pub password: Option<String>,
    pub database: String,
}

impl DbServer {
    /// `host:port`, for messages and diagrams.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Hand-written so that printing a site never prints a password.
impl std::fmt::Debug for DbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbServer")
            .field("name", &self.name)
            .field("address", &self.address())
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// Whether browsers can reach the site over HTTPS: a load balancer has a
    /// `tls_listen`, or the local cluster a floating `tls_address`.
    pub fn has_https(&self) -> bool {
        self.lbs.iter().any(|l| l.tls_listen.is_some())
            || matches!(
                self.cluster.as_ref().map(|c| &c.floating),
                Some(Floating::Local {
                    tls_address: Some(_),
                    ..
                })
            )
    }

    /// Every node with its role, in file order: load balancers, web, app.
    pub fn nodes(&self) -> impl Iterator<Item = (Role, &Node)> {
        self.lbs
            .iter()
            .map(|n| (Role::Lb, &n.node))
            .chain(self.webs.iter().map(|n| (Role::Web, &n.node)))
            .chain(self.apps.iter().map(|n| (Role::App, &n.node)))
    }

    /// The node called `name`, with its role.
    pub fn node(&self, name: &str) -> Option<(Role, &Node)> {
        self.nodes().find(|(_, n)| n.name == name)
    }

    /// The web server called `name`.
    pub fn web(&self, name: &str) -> Option<&WebNode> {
        self.webs.iter().find(|w| w.node.name == name)
    }

    /// The application server called `name`.
    pub fn app(&self, name: &str) -> Option<&AppNode> {
        self.apps.iter().find(|a| a.node.name == name)
    }

    /// The load balancer called `name`.
    pub fn lb(&self, name: &str) -> Option<&LbNode> {
        self.lbs.iter().find(|l| l.node.name == name)
    }

    /// The admin token from `$admin_token_env`, read now (a node reads it when it
    /// starts). `Ok(None)` when the site names no variable; an error saying what to
    /// export when the variable is named but unset or empty.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        let Some(name) = &self.admin_token_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_string())),
            Ok(_) => Err(format!(
                "the admin token comes from ${name}, which is empty: export {name}=... \
                 (a long random value, the same for every node and the command line)"
            )),
            Err(_) => Err(format!(
                "the admin token comes from ${name}, which is not set: export {name}=... \
                 (a long random value, the same for every node and the command line)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> CacheRule {
        CacheRule {
            pattern: pattern.into(),
            cache_control: "x".into(),
        }
    }

    #[test]
    fn cache_patterns_match_like_globs() {
        assert!(rule("/static/*").matches("/static/app.js"));
        assert!(rule("/static/*").matches("/static/a/b.css"));
        assert!(!rule("/static/*").matches("/index.html"));
        assert!(rule("*.css").matches("/static/style.css"));
        assert!(!rule("*.css").matches("/static/style.css.map"));
        assert!(rule("/exact.txt").matches("/exact.txt"));
        assert!(!rule("/exact.txt").matches("/exact.txt2"));
        assert!(rule("/*/*.js").matches("/a/b/c.js"));
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_parse_and_print() {
        assert_eq!(cidr("::1").prefix, 128);
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_refuses_what_is_not_a_block() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err();
        assert_eq!(err("10.0.0.0/33"), CidrError::Prefix);
        assert_eq!(err("10.0.0.0/"), CidrError::Prefix);
        assert_eq!(err("10.0.0.0/+8"), CidrError::Prefix);
        assert_eq!(err("::/129"), CidrError::Prefix);
        assert_eq!(err("example.com"), CidrError::Address);
        assert_eq!(err("10.0.0/8"), CidrError::Address);
        assert_eq!(err("10.1.2.3/8"), CidrError::HostBits(cidr("10.0.0.0/8")));
    }
}
