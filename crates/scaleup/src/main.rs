//! `scaleup`: runs the scale-up infrastructure of `www.foobar.com` from one site file.
//!
//! - `scaleup up` starts every node of a site on this machine and supervises them;
//! - `scaleup run NODE --site FILE` runs one node, as on its own server;
//! - `scaleup check`, `explain` and `status` read a site file and tell a person
//!   whether it is right, how it is shaped and how it is doing;
//! - `scaleup drain` and `ready` take a server out of its pools and put it back,
//!   through the balancing nodes' admin listeners, with the site's admin token;
//! - `scaleup reload` makes running nodes re-read their site file; `upgrade` and
//!   `roll` give them new processes without dropping a request;
//! - `scaleup db switchover` moves the MariaDB primary on purpose;
//! - `scaleup trace ID` gathers one request's lines from every node's logs;
//! - `scaleup prometheus` prints a Prometheus configuration that scrapes every node.
//!
//! The binary only wires things together: each role lives in its own crate.
#![forbid(unsafe_code)]

mod admin;
mod configs;
mod database;
mod decider;
mod drill;
mod notify;
mod probe;
mod prometheus;
mod reload;
mod run;
mod status;
mod systemd;
mod trace;
mod up;
mod upgrade;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scaleup",
    version,
    about = "Run the scale-up web infrastructure of www.foobar.com"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the site comes from: a file, or the built-in default.
#[derive(clap::Args, Clone)]
struct SiteArgs {
    /// The site file. Without it, the built-in default site is used.
    #[arg(long, value_name = "FILE")]
    site: Option<PathBuf>,
    /// First port of the built-in default site (it uses this port and the next 22).
    #[arg(long, default_value_t = 8080, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(u16::MAX - 22)))]
    base_port: u16,
    /// State directory of the built-in default site.
    #[arg(long, default_value = ".scaleup", value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Start every node of the site on this machine; Ctrl-C stops them all.
    Up(SiteArgs),
    /// Run one node of a site file, as on its own server.
    Run {
        /// The node's name in the site file (lb1, web1, app1...).
        node: String,
        /// The site file.
        #[arg(long, value_name = "FILE")]
        site: PathBuf,
        /// Stop when standard input closes (set by `scaleup up`, so that nodes never
        /// outlive their supervisor).
        #[arg(long, hide = true)]
        supervised: bool,
        /// Take the listening sockets of the node's running process (which then
        /// drains and exits) instead of binding them: what `scaleup upgrade` starts.
        #[arg(long, hide = true)]
        upgrade: bool,
    },
    /// Check a site file and point at each mistake.
    Check {
        /// The site file.
        #[arg(long, value_name = "FILE")]
        site: PathBuf,
    },
    /// Show the site's shape, why each element is there, and its risks.
    Explain {
        #[command(flatten)]
        site: SiteArgs,
        /// Print only the Mermaid diagram.
        #[arg(long)]
        mermaid: bool,
    },
    /// Rehearse a failure on a running site and measure what clients saw.
    Drill {
        #[command(subcommand)]
        what: DrillCommand,
    },
    /// Take a web or app server out of every pool it is in (no new requests, those in
    /// flight finish) and wait until it is idle.
    Drain {
        /// The server to drain (web2, app1...).
        node: String,
        #[command(flatten)]
        site: SiteArgs,
        /// How long to wait for its requests in flight before giving up (non-zero exit).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Put a drained server back in its pools; its share of traffic ramps up over the
    /// pools' `slowstart`.
    Ready {
        /// The server to put back (web2, app1...).
        node: String,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Re-read the site file on every node (or those named) and apply what can change
    /// in place; print per node what changed and what needs `upgrade`. A broken file
    /// is refused with its line and column, and every node keeps its configuration.
    Reload {
        /// Only these nodes (lb1, web2...); all of them when none is given.
        nodes: Vec<String>,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Replace a node's process with the binary now on disk and the current site file,
    /// without dropping a connection: the new process takes the listening sockets,
    /// the old one finishes what it has in flight and exits.
    Upgrade {
        /// The node to upgrade (lb1, web1, app1...).
        node: String,
        #[command(flatten)]
        site: SiteArgs,
        /// How long the new process may take to serve, and the old one to exit.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Upgrade a tier one node at a time: drain, upgrade, wait until healthy, ready,
    /// next (load balancers: the passive one first, no drain).
    Roll {
        /// The tier: web, app or lb.
        tier: String,
        #[command(flatten)]
        site: SiteArgs,
        /// How long each step may take.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The database tier: `scaleup db switchover [REPLICA]`.
    Db {
        #[command(subcommand)]
        what: DbCommand,
    },
    /// Ask every node of a running site how it is doing.
    Status {
        #[command(flatten)]
        site: SiteArgs,
        /// Print the nodes' raw status as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Follow one request through the site: every node's log lines for its request id
    /// (the X-Request-Id response header), from the client inwards, with each hop's time.
    Trace {
        /// The request id (or a W3C trace id, for every request of that trace).
        id: String,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Print a Prometheus configuration that scrapes every node's admin `/metrics`
    /// (one job a role, each target labelled with its node); see
    /// examples/grafana-dashboard.json for a dashboard of those metrics.
    Prometheus {
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Print a systemd unit that runs one node on a server of its own.
    Systemd {
        /// The node's name in the site file (lb1, web1, app1...).
        node: String,
        /// The site file, where it will stay on the server (the unit names it).
        #[arg(long, value_name = "FILE")]
        site: PathBuf,
        /// The account the node runs as (create it with `useradd --system`).
        #[arg(long, default_value = systemd::DEFAULT_USER, value_name = "USER")]
        user: String,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Move the MariaDB primary on purpose: the old one goes read-only, REPLICA (or the
    /// most advanced replica) catches up and takes the writes; nothing is lost and
    /// writes pause for a moment.
    Switchover {
        /// The replica to promote (replica1...); the most advanced one if not given.
        replica: Option<String>,
        #[command(flatten)]
        site: SiteArgs,
    },
}

#[derive(Subcommand)]
enum DrillCommand {
    /// Stop a load balancer (SIGKILL, or SIGTERM with --graceful) under a bounded
    /// stream of requests to the floating address; report the gap and who took over.
    Kill {
        /// The load balancer to stop (lb1, lb2).
        node: String,
        #[command(flatten)]
        site: SiteArgs,
        /// Stop it cleanly (SIGTERM) instead of killing it.
        #[arg(long)]
        graceful: bool,
        /// How long to keep sending requests after the stop.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

/// jemalloc, not glibc's allocator: measured on the load balancer (`bench/side-by-side`
/// with the same binary and `LD_PRELOAD`), 5-30% more requests/s and a lower p99
/// under keep-alive load, and 5.4 instead of 7.6 KiB per idle client connection
/// (glibc's heap fragments as hyper's 8 KiB buffers come and go between small,
/// long-lived connection state; jemalloc keeps sizes apart). One arena
/// (`.cargo/config.toml`): the serving threads' caches make its lock rare, and the
/// arenas a default jemalloc makes per core each kept their own partly used pages.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::up(&args),
        Command::Run {
            node,
            site,
            supervised,
            upgrade,
        } => run::run(&site, &node, supervised, upgrade),
        Command::Upgrade {
            node,
            site,
            timeout,
        } => upgrade::upgrade(&site, &node, timeout),
        Command::Roll {
            tier,
            site,
            timeout,
        } => upgrade::roll(&site, &tier, timeout),
        Command::Check { site } => check(&site),
        Command::Db {
            what: DbCommand::Switchover { replica, site },
        } => database::switchover(&site, replica.as_deref()),
        Command::Explain { site, mermaid } => explain(&site, mermaid),
        Command::Status { site, json } => status::status(&site, json),
        Command::Drain {
            node,
            site,
            timeout,
        } => admin::drain(&site, &node, timeout),
        Command::Ready { node, site } => admin::ready(&site, &node),
        Command::Reload { nodes, site } => reload::reload(&site, &nodes),
        Command::Trace { id, site } => trace::trace(&site, &id),
        Command::Prometheus { site } => prometheus::print(&site),
        Command::Systemd { node, site, user } => systemd::print(&node, &site, &user),
        Command::Drill {
            what:
                DrillCommand::Kill {
                    node,
                    site,
                    graceful,
                    duration,
                },
        } => drill::drill(&site, &node, graceful, duration),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the site the arguments name: the file, or the default site (written into
/// its state directory so that nodes can read it like any other file).
fn load_site(args: &SiteArgs, write_default: bool) -> anyhow::Result<(PathBuf, site::Site)> {
    if let Some(path) = &args.site {
        let site = site::load(path)?;
        return Ok((path.clone(), site));
    }
    let state_dir = std::path::absolute(&args.state_dir)?;
    // A fresh heartbeat secret each time: every node of this run reads it from the
    // file written below.
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let text = site::default_site(args.base_port, &state_dir.to_string_lossy(), &secret);
    let path = state_dir.join("site.toml");
    if write_default {
        // The state directory is scaleup's own here (the default site's), so an
        // older, looser one is tightened too.
        private_dir(&state_dir, true)?;
        write_private(&path, &text)?;
    }
    let site = site::parse(&text, "(built-in default site)", &state_dir)?;
    Ok((path, site))
}

/// Makes sure `dir` exists and only its owner can enter it: it holds the site file
/// with the cluster secret, the database, the TLS key. A directory made here is made
/// 0700 (parents included); one that exists with access for others is made 0700
/// when `tighten` (a directory scaleup owns by convention), else reported.
pub(crate) fn private_dir(dir: &Path, tighten: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let existed = dir.is_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create state directory {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read state directory {}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if !existed || tighten {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!(
                "cannot make state directory {} private (chmod 700): {e}",
                dir.display()
            )
        })?;
    } else {
        eprintln!(
            "scaleup: warning: the state directory {} is open to other users (mode {:o}); \
             it holds the database and keys: chmod 700 {}",
            dir.display(),
            mode & 0o777,
            dir.display()
        );
    }
    Ok(())
}

/// Writes `text` to `path` readable and writable by its owner only (0600), also when
/// the file already exists with a looser mode: it holds the cluster secret.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    // Before the secret goes in: `mode` above only applies to a new file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let site = site::load(path)?;
    println!(
        "{}: ok, {} load balancer(s), {} web server(s), {} application server(s)",
        path.display(),
        site.lbs.len(),
        site.webs.len(),
        site.apps.len()
    );
    Ok(())
}

fn explain(args: &SiteArgs, mermaid_only: bool) -> anyhow::Result<()> {
    let (_, site) = load_site(args, false)?;
    let explanation = site::explain::explain(&site);
    if mermaid_only {
        print!("{}", explanation.mermaid);
    } else {
        print!("{}", explanation.render_text());
    }
    Ok(())
}
