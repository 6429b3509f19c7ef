//! `scaleup run NODE --site FILE`: one node of a site, as on its own server.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use site::{Role, Site};

use crate::configs;
use crate::reload::SiteFile;

/// Runs node `name` of the site file at `path` until SIGINT or SIGTERM (or, when
/// `supervised`, until standard input closes), then stops it cleanly.
pub fn run(path: &Path, name: &str, supervised: bool) -> anyhow::Result<()> {
    init_logging();
    raise_open_file_limit(name);
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
        let listener = net::server::bind(node.bind)?;
        let admin = net::server::bind(node.admin)?;
        tokio::spawn(tell_systemd_when_serving(
            admin.local_addr()?,
            shutdown.clone(),
        ));
        match role {
            Role::Lb => {
                let config = configs::lb(&site, name, config_hash)?;
                let reloads = net::reload::Reloads {
                    trigger: reload,
                    requests: reload_requests,
                    source: Box::new(SiteFile::new(path, name, &site, &config, |s, n, h| {
                        configs::lb(s, n, h)
                    })),
                };
                let tls = bind_optional(site.lb(name).and_then(|l| l.tls_listen))?;
                lb::serve_reloadable(config, listener, tls, admin, shutdown, Some(reloads)).await
            }
            Role::Web => {
                let config = configs::web(&site, name)?;
                let reloads = net::reload::Reloads {
                    trigger: reload,
                    requests: reload_requests,
                    source: Box::new(SiteFile::new(path, name, &site, &config, |s, n, _| {
                        configs::web(s, n)
                    })),
                };
                let tls = bind_optional(site.web(name).and_then(|w| w.tls_listen))?;
                web::serve_reloadable(config, listener, tls, admin, shutdown, Some(reloads)).await
            }
            Role::App => {
                app::serve(name, configs::app(&site, name)?, listener, admin, shutdown).await
            }
        }
    })?;
    tracing::info!(node = name, "stopped");
    Ok(())
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

/// Tells systemd `READY=1` (when it runs this node, see [`crate::notify`]) once the
/// node answers on its admin listener, which it starts with its other listeners after
/// its setup (the app server opens its database first): so `systemctl start`
/// returns when the node serves, not when the process exists. Any answer counts: a
/// load balancer whose web servers are not up yet answers 503, and is serving.
async fn tell_systemd_when_serving(admin: std::net::SocketAddr, shutdown: net::Shutdown) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // A wildcard listener is asked on loopback.
    let probe = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, admin.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, admin.port()))
        }
        _ => admin,
    };
    let timeout = std::time::Duration::from_secs(1);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if crate::probe::get(probe, "/healthz", timeout).await.is_ok() {
            crate::notify::notify_logged(&format!("READY=1\nSTATUS=serving, admin on {admin}"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// Binds an optional listener (a node's HTTPS one).
fn bind_optional(
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    Ok(addr.map(net::server::bind).transpose()?)
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
