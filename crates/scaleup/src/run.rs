//! `scaleup run NODE --site FILE`: one node of a site, as on its own server.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use site::{Role, Site};

use crate::configs;
use crate::reload::SiteFile;

/// Runs node `name` of the site file at `path` until SIGINT or SIGTERM (or, when
/// `supervised`, until standard input closes), then stops it cleanly. With `upgrade`,
/// takes the listening sockets of the node's running process instead of binding them,
/// and that process stops once this one serves (`scaleup upgrade`, `net::handover`).
pub fn run(path: &Path, name: &str, supervised: bool, upgrade: bool) -> anyhow::Result<()> {
    init_logging();
    raise_open_file_limit(name);
    // Now, not at upgrade time: once a new build replaces the file, this path names
    // the new binary, which is the point of an upgrade.
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let (site, config_hash) = load(path)?;
    let (role, node) = site.node(name).ok_or_else(|| {
        let names: Vec<&str> = site.nodes().map(|(_, n)| n.name.as_str()).collect();
        anyhow::anyhow!(
            "there is no node called `{name}` in {}; its nodes are: {}",
            path.display(),
            names.join(", ")
        )
    })?;
    let node = node.clone();
    tracing::info!(
        node = name,
        "site file {} (config {})",
        path.display(),
        cluster::wire::hex(&config_hash)
    );
    let handover_path = net::handover::socket_path(&site.state_dir, name);
    let taken = match upgrade {
        true => {
            let taken = net::handover::take(&handover_path)?;
            tracing::info!(
                node = name,
                "took the listening sockets of pid {}",
                taken.predecessor
            );
            Some(taken)
        }
        false => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{name}-worker"))
        .build()?;
    runtime.block_on(async {
        let (trigger, shutdown) = net::shutdown::channel();
        let trigger = std::sync::Arc::new(trigger);
        // The load balancers and web servers take reloads (`POST /reload`, SIGHUP).
        let (reload, reload_requests) = net::reload::channel();
        let takes_reloads = matches!(role, Role::Lb | Role::Web);
        watch_signals(trigger.clone(), takes_reloads.then(|| reload.clone()))?;
        if supervised {
            watch_stdin(trigger.clone());
        }
        let tls_listen = match role {
            Role::Lb => site.lb(name).and_then(|l| l.tls_listen),
            Role::Web => site.web(name).and_then(|w| w.tls_listen),
            Role::App => None,
        };
        let mut sockets = Sockets { taken };
        let listener = sockets.tcp("http", node.bind)?;
        let admin = sockets.tcp("admin", node.admin)?;
        let tls = tls_listen.map(|a| sockets.tcp("tls", a)).transpose()?;
        let unix = sockets.unix(&handover_path)?;

        // What the node hands its successor, and when.
        let mut offered = vec![
            ("http".to_string(), dup(&listener)?),
            ("admin".to_string(), dup(&admin)?),
            (net::handover::HANDOVER.to_string(), dup(&unix)?),
        ];
        if let Some(tls) = &tls {
            offered.push(("tls".to_string(), dup(tls)?));
        }
        let (released_tx, released_rx) = tokio::sync::oneshot::channel();
        let stopper = trigger.clone();
        let offer = tokio::spawn(net::handover::offer(
            unix,
            net::handover::Offer {
                sockets: offered,
                stop: Box::new(move || stopper.fire()),
                released: Box::pin(async move {
                    let _ = released_rx.await;
                }),
            },
            shutdown.clone(),
        ));
        net::handover::on_upgrade(successor_starter(exe, path, name, supervised));

        // Serving is said once this process answers on its admin listener: to the
        // predecessor (which then stops), to `scaleup up` (the pid file) and to systemd.
        let (predecessor_tx, predecessor_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(announce_when_serving(
            admin.local_addr()?,
            shutdown.clone(),
            sockets.taken.take(),
            net::handover::pid_path(&site.state_dir, name),
            predecessor_tx,
        ));
        let predecessor_released = Box::pin(async move {
            let _ = predecessor_rx.await;
        });
        let result = match role {
            Role::Lb => {
                let config = configs::lb(&site, name, config_hash)?;
                let reloads = net::reload::Reloads {
                    trigger: reload,
                    requests: reload_requests,
                    source: Box::new(SiteFile::new(path, name, &site, &config, |s, n, h| {
                        configs::lb(s, n, h)
                    })),
                };
                let (active, watching) = tokio::sync::watch::channel(false);
                let hooks = lb::Hooks {
                    predecessor_released: upgrade.then_some(predecessor_released),
                    released: Some(released_tx),
                    active: Some(active),
                    beside: database_failover(&site, watching, &shutdown)?,
                };
                lb::serve_reloadable(config, listener, tls, admin, shutdown, Some(reloads), hooks)
                    .await
            }
            Role::Web => {
                let _ = released_tx.send(());
                let config = configs::web(&site, name)?;
                let reloads = net::reload::Reloads {
                    trigger: reload,
                    requests: reload_requests,
                    source: Box::new(SiteFile::new(path, name, &site, &config, |s, n, _| {
                        configs::web(s, n)
                    })),
                };
                web::serve_reloadable(config, listener, tls, admin, shutdown, Some(reloads)).await
            }
            Role::App => {
                let _ = released_tx.send(());
                app::serve(name, configs::app(&site, name)?, listener, admin, shutdown).await
            }
        };
        // The handover's connection (if a successor took over) closes with this
        // process: its end tells the successor this one is gone.
        offer.abort();
        // A pid file still naming this process is stale now (a successor wrote its own).
        let pid_file = net::handover::pid_path(&site.state_dir, name);
        if std::fs::read_to_string(&pid_file)
            .is_ok_and(|pid| pid.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(&pid_file);
        }
        result
    })?;
    tracing::info!(node = name, "stopped");
    Ok(())
}

/// The database failover decider a load balancer runs beside it (`crate::decider`),
/// when it can reach the database servers as an administrator: the managed ones, or a
/// site's own with the failover accounts of `[database]`.
fn database_failover(
    site: &site::Site,
    active: tokio::sync::watch::Receiver<bool>,
    shutdown: &net::Shutdown,
) -> anyhow::Result<Option<std::sync::Arc<dyn lb::Beside>>> {
    let site::Database::Mysql(mysql) = &site.database else {
        return Ok(None);
    };
    if !mysql.auto_failover {
        tracing::info!("database failover is manual (`failover = \"manual\"` in [database])");
        return Ok(None);
    }
    let Some(topology) = configs::failover_topology(site)? else {
        tracing::info!(
            "database failover is manual: the load balancers have no account to administer \
             the site's own MariaDB servers (`admin_user`... in [database])"
        );
        return Ok(None);
    };
    let decider = crate::decider::Decider::new(topology, &mysql.primary.name);
    decider.spawn(active, shutdown.clone())?;
    Ok(Some(decider))
}

/// Where a node's listening sockets come from: bound here, or taken from the node's
/// previous process (an upgrade).
struct Sockets {
    taken: Option<net::handover::Taken>,
}

impl Sockets {
    /// The TCP listener `name` on `addr`: the predecessor's if it listened there (a
    /// site file that moved the address gets a new socket; the old one closes with the
    /// predecessor).
    fn tcp(&mut self, name: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        if let Some(taken) = &mut self.taken {
            if let Some(listener) = taken.tcp(name)? {
                if listener.local_addr()? == addr {
                    return Ok(listener);
                }
                tracing::info!(
                    "the {name} listener moves from {} to {addr}",
                    listener.local_addr()?
                );
            }
        }
        Ok(net::server::bind(addr)?)
    }

    /// The Unix socket a successor of this process will connect to.
    fn unix(&mut self, path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
        if let Some(fd) = self
            .taken
            .as_mut()
            .and_then(|t| t.socket(net::handover::HANDOVER))
        {
            return Ok(std::os::unix::net::UnixListener::from(fd));
        }
        net::handover::listen(path).with_context(|| {
            format!(
                "cannot listen for an upgrade of this node on {}",
                path.display()
            )
        })
    }
}

/// A second descriptor of `socket`, for the handover: the socket stays one socket.
fn dup(socket: &impl AsFd) -> std::io::Result<OwnedFd> {
    socket.as_fd().try_clone_to_owned()
}

/// How `POST /upgrade` starts this node's successor: the binary now at `exe`, with the
/// same site file and supervision, and `--upgrade`. It inherits standard input (the
/// supervisor's lifeline), output and error (the same log), and the environment (the
/// admin token). At most one at a time; one that exits before it serves is reported
/// in the log, and a later upgrade may try again.
fn successor_starter(
    exe: PathBuf,
    site: &Path,
    name: &str,
    supervised: bool,
) -> impl Fn() -> Result<serde_json::Value, String> + Send + Sync + 'static {
    let site = site.to_path_buf();
    let name = name.to_string();
    let starting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    move || {
        use std::sync::atomic::Ordering::SeqCst;
        if starting.swap(true, SeqCst) {
            return Err(format!("{name} is being upgraded already"));
        }
        let mut command = std::process::Command::new(&exe);
        command.arg("run").arg(&name).arg("--site").arg(&site);
        if supervised {
            command.arg("--supervised");
        }
        let mut child = match command.arg("--upgrade").spawn() {
            Ok(child) => child,
            Err(e) => {
                starting.store(false, SeqCst);
                return Err(format!("cannot start {}: {e}", exe.display()));
            }
        };
        let pid = child.id();
        tracing::info!(node = %name, "upgrade: started pid {pid} from {}", exe.display());
        let (again, node) = (starting.clone(), name.clone());
        // Reaps it if it ends while this process lives (a failed upgrade).
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                tracing::warn!(node = %node, "upgrade: pid {pid} exited ({status})");
            }
            again.store(false, SeqCst);
        });
        Ok(serde_json::json!({
            "node": name,
            "predecessor": std::process::id(),
            "successor": pid,
            "binary": exe.display().to_string(),
        }))
    }
}

/// Reads and checks the site file, and hashes the very bytes it checked: the load
/// balancers put the hash in their heartbeats so each sees whether its peer runs the
/// same file (`cluster::wire::config_hash`).
pub(crate) fn load(path: &Path) -> anyhow::Result<(Site, cluster::wire::ConfigHash)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the site file {}", path.display()))?;
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let site = site::parse(&text, &path.display().to_string(), &base)?;
    Ok((site, cluster::wire::config_hash(text.as_bytes())))
}

/// Says this node serves once it answers on its admin listener itself (a probe may
/// reach the predecessor, which shares the socket during an upgrade: the answer's pid
/// tells them apart): writes the pid file `scaleup up` follows the node by, tells the
/// predecessor (which stops, and answers `predecessor` once it released the cluster),
/// and tells systemd `READY=1` (with `MAINPID`, the main process now being this one).
/// The admin listener starts with the others after the role's setup (the app server
/// opens its database first), so `systemctl start` returns when the node serves. Any
/// answer counts: a load balancer whose web servers are not up yet answers, and serves.
async fn announce_when_serving(
    admin: SocketAddr,
    shutdown: net::Shutdown,
    taken: Option<net::handover::Taken>,
    pid_file: PathBuf,
    predecessor: tokio::sync::oneshot::Sender<()>,
) {
    // A wildcard listener is asked on loopback.
    let probe = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, admin.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, admin.port()))
        }
        _ => admin,
    };
    let timeout = std::time::Duration::from_secs(1);
    let me = u64::from(std::process::id());
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if let Ok((_, body)) = crate::probe::get(probe, "/status", timeout).await {
            let answered: Option<u64> = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["pid"].as_u64());
            if answered == Some(me) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if let Err(e) = std::fs::write(&pid_file, format!("{me}\n")) {
        tracing::warn!("cannot write {}: {e}", pid_file.display());
    }
    // Before the predecessor stops: systemd must know the new main process first.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        crate::notify::notify_logged(&format!(
            "MAINPID={me}\nREADY=1\nSTATUS=serving, admin on {admin}"
        ));
    }
    if let Some(taken) = taken {
        let from = taken.predecessor;
        match taken.serving() {
            Ok(released) => {
                released.wait().await;
                tracing::info!("upgrade: pid {from} released the node to this process");
            }
            Err(e) => tracing::warn!("upgrade: telling pid {from} this process serves: {e}"),
        }
    }
    let _ = predecessor.send(());
}

/// Lifts the soft open-file limit to the hard one before any socket is opened, and
/// says what both are: the connection budgets are sized from it.
fn raise_open_file_limit(name: &str) {
    match net::budget::raise_open_file_limit() {
        Ok((soft, hard)) if soft < hard => {
            tracing::info!(
                node = name,
                "open-file limit raised from {soft} to {hard} (the hard limit)"
            )
        }
        Ok((_, hard)) => tracing::info!(node = name, "open-file limit: {hard} (the hard limit)"),
        Err(e) => tracing::warn!(
            node = name,
            "cannot raise the open-file limit ({e}); connections are budgeted from {}",
            net::budget::open_file_limit()
        ),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in `scaleup up`'s pipes or files.
        .with_ansi(std::io::stderr().is_terminal())
        // A node whose supervisor died has no reader on stderr: a failed log write
        // must not turn into a panic (the default reports it with `eprintln!`).
        .log_internal_errors(false)
        .with_target(false)
        .init();
}

/// SIGINT and SIGTERM both mean "stop cleanly". SIGHUP, which the systemd unit's
/// `ExecReload` sends, reloads the site file (as `POST /reload` does) on a node that
/// takes reloads, and never stops the node (its default action would).
fn watch_signals(
    trigger: std::sync::Arc<net::shutdown::Trigger>,
    reload: Option<net::reload::Trigger>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
                _ = hup.recv() => {
                    match &reload {
                        // The reload task logs what changed, or why nothing did.
                        Some(reload) => {
                            tracing::info!("SIGHUP: reloading the site file");
                            let reload = reload.clone();
                            tokio::spawn(async move { reload.reload().await });
                        }
                        None => tracing::warn!(
                            "SIGHUP: an application server cannot reload its site file in \
                             place; it keeps its configuration (restart it to apply a new one)"
                        ),
                    }
                    continue;
                }
            }
            break;
        }
        crate::notify::notify_logged("STOPPING=1");
        trigger.fire();
    });
    Ok(())
}

/// A supervised node stops when its supervisor's end of stdin closes, which also
/// happens when the supervisor is killed: nodes never outlive `scaleup up`.
fn watch_stdin(trigger: std::sync::Arc<net::shutdown::Trigger>) {
    // A plain thread, not a runtime task: a blocked read must not hold up shutdown.
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        let why = loop {
            match stdin.read(&mut buf) {
                Ok(0) => break "closed".to_string(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break e.to_string(),
            }
        };
        // Stop first, log second: with the supervisor gone, the log may have no
        // reader left.
        crate::notify::notify_logged("STOPPING=1");
        trigger.fire();
        tracing::info!("supervisor gone (standard input {why}): stopping");
    });
}
