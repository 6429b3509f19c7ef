//! The resolved site: what every node needs to know, with defaults filled in and
//! every reference checked. Built by [`crate::parse`]; nothing here touches the file.

use std::net::SocketAddr;
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
}

/// An application server node.
#[derive(Debug, Clone)]
pub struct AppNode {
    pub node: Node,
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
    /// How many other servers an idempotent request that failed to connect is retried on.
    pub retries: u32,
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
    /// A client sending its request head, and an idle keep-alive client.
    pub client: Duration,
    /// An upstream server sending its response head.
    pub server: Duration,
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
}
