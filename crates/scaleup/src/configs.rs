//! Every component's own configuration, built from the site file in one place: the
//! load balancer's (`lb::Config`), the web server's (`web::Config`), the application's
//! (`app::AppConfig`) and the database's (`db::Config`). `scaleup run` starts a node
//! with them, and a reload is "build the new ones, [`diff`] the site files, swap".
//!
//! [`diff`] says, for one node, what a new site file changes (`diff.rs`); the load
//! balancer's configuration, with its place in the cluster and the site's picture for
//! its dashboard, is built in `lb.rs`. The settings `net` runs with are `net`'s own
//! types, converted here from the site file's.

mod diff;
mod lb;

pub(crate) use diff::diff;
pub(crate) use lb::lb;

use std::path::PathBuf;

use anyhow::Context;
use site::{Database, Site};

/// Web server `name`'s configuration (its document root written out first when it is
/// the built-in one).
pub(crate) fn web(site: &Site, name: &str) -> anyhow::Result<web::Config> {
    let web = site
        .web(name)
        .ok_or_else(|| anyhow::anyhow!("`{name}` is not a web server of this site"))?;
    Ok(web::Config {
        name: name.to_string(),
        root: document_root(site, name)?,
        apps: web
            .apps
            .iter()
            .filter_map(|a| site.app(a))
            .map(|n| net::upstream::Server {
                name: n.node.name.clone(),
                addr: n.node.listen,
                weight: n.weight,
            })
            .collect(),
        slowstart: web.slowstart,
        admin_token: site.admin_token().into(),
        access_log: web.access_log.clone(),
        log_format: log_format(site.log_format),
        health: health(&web.health),
        timeouts: timeouts(&web.timeouts),
        max_connections: web.max_connections,
        max_connections_per_client: web.max_connections_per_client as usize,
        tls: match web.tls_listen {
            Some(_) => Some(cert_files(site)?),
            None => None,
        },
        hsts: site.tls.hsts.clone(),
        // The load balancers: who may send a PROXY header, whose forwarding headers
        // are believed.
        proxy_from: site
            .lbs
            .iter()
            .flat_map(|l| [l.node.listen.ip(), l.node.bind.ip()])
            .map(|ip| ip.to_canonical())
            .collect(),
        headers: web.headers.clone(),
        cache: web.cache.clone(),
        max_body_bytes: web.max_body_bytes,
    })
}

/// The web server's document root: the site's, or the built-in foobar assets
/// written into the state directory.
pub(crate) fn document_root(site: &Site, name: &str) -> anyhow::Result<PathBuf> {
    let web = site.web(name).expect("role checked by the caller");
    if let Some(root) = &web.root {
        return Ok(root.clone());
    }
    let root = site.state_dir.join("public");
    for (rel, bytes) in app::ASSETS {
        let path = root.join(rel);
        if std::fs::read(&path).ok().as_deref() == Some(*bytes) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

pub(crate) fn app(site: &Site, name: &str) -> anyhow::Result<app::AppConfig> {
    anyhow::ensure!(
        site.app(name).is_some(),
        "`{name}` is not an application server"
    );
    Ok(app::AppConfig {
        db: db(site)?,
        site_name: site.name.clone(),
        https: site_has_https(site),
        key: app::AppKey::load(&site.state_dir)?,
        trusted_proxies: proxy_addresses(site),
        max_body_bytes: site
            .webs
            .iter()
            .map(|w| usize::try_from(w.max_body_bytes).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(app::DEFAULT_MAX_BODY_BYTES),
        access_log: site.app(name).and_then(|a| a.access_log.clone()),
        log_format: log_format(site.log_format),
        admin_token: site.admin_token().into(),
        // The web tier's: a WebSocket through it is drained by each hop alike.
        drain_timeout: site
            .webs
            .iter()
            .map(|w| w.timeouts.drain)
            .max()
            .unwrap_or(net::server::Limits::default().drain_timeout),
    })
}

/// Whether browsers reach the site over HTTPS: any TLS listener (a web server's or a load
/// balancer's, or the cluster's floating HTTPS address). The app then marks its cookies
/// `Secure` with the `__Host-` prefix.
fn site_has_https(site: &Site) -> bool {
    site.webs.iter().any(|w| w.tls_listen.is_some())
        || site.lbs.iter().any(|l| l.tls_listen.is_some())
        || matches!(
            site.cluster.as_ref().map(|c| &c.floating),
            Some(site::Floating::Local {
                tls_address: Some(_),
                ..
            })
        )
}

/// The addresses of the site's web servers and load balancers, the only peers whose
/// forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`) an app server believes.
pub(crate) fn proxy_addresses(site: &Site) -> Vec<std::net::IpAddr> {
    let nodes = site
        .webs
        .iter()
        .map(|w| &w.node)
        .chain(site.lbs.iter().map(|l| &l.node));
    let mut addresses: Vec<std::net::IpAddr> = nodes
        .flat_map(|n| [n.listen.ip(), n.bind.ip()])
        .filter(|ip| !ip.is_unspecified())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// The site's `[database]` as the `db` crate takes it, with the password resolved.
pub(crate) fn db(site: &Site) -> anyhow::Result<db::Config> {
    Ok(match &site.database {
        Database::Sqlite { path } => db::Config::Sqlite { path: path.clone() },
        Database::Mysql(m) => db::Config::Mysql(db::MysqlConfig {
            primary: db_server(m, &m.primary)?,
            replicas: m
                .replicas
                .iter()
                .map(|r| db_server(m, r))
                .collect::<anyhow::Result<_>>()?,
            max_replica_lag: m.max_replica_lag,
            read_your_writes_timeout: m.read_your_writes_timeout,
        }),
    })
}

/// The managed MariaDB servers of `site` (`managed = true`), where `scaleup up` keeps
/// them: `STATE/mariadb/NAME`. `None` for any other database.
pub(crate) fn managed_spec(site: &Site) -> anyhow::Result<Option<db::managed::Spec>> {
    let Database::Mysql(m) = &site.database else {
        return Ok(None);
    };
    if !m.managed {
        return Ok(None);
    }
    let db::Config::Mysql(config) = db(site)? else {
        unreachable!("a mysql [database] gives a mysql config");
    };
    Ok(Some(db::managed::Spec {
        dir: site.state_dir.join("mariadb"),
        primary: config.primary,
        replicas: config.replicas,
    }))
}

/// The database servers as the failover administers them: the managed ones over their
/// Unix sockets, a site's own over TCP with its failover accounts (passwords from the
/// environment). `None` when neither is possible (SQLite, or own servers without
/// accounts): failover is then a person's job.
pub(crate) fn failover_topology(site: &Site) -> anyhow::Result<Option<db::failover::Topology>> {
    let Database::Mysql(m) = &site.database else {
        return Ok(None);
    };
    let policy = replica_ack(m.on_no_replica_ack);
    if let Some(spec) = managed_spec(site)? {
        return Ok(Some(db::managed::topology(&spec, policy, CATCH_UP)));
    }
    let Some(accounts) = &m.accounts else {
        return Ok(None);
    };
    let secret = |var: &str| {
        std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "the site file's [database] takes a failover password from the environment \
                 variable {var}, which is not set: export {var}=... before starting"
            )
        })
    };
    let admin_password = secret(&accounts.admin_password_env)?;
    let nodes = std::iter::once(&m.primary)
        .chain(&m.replicas)
        .map(|s| {
            db::failover::Node::tcp(
                &s.name,
                &s.host,
                s.port,
                &accounts.admin_user,
                &admin_password,
            )
        })
        .collect();
    Ok(Some(db::failover::Topology {
        nodes,
        replication_user: accounts.replication_user.clone(),
        replication_password: secret(&accounts.replication_password_env)?,
        on_no_replica_ack: policy,
        catch_up_timeout: CATCH_UP,
    }))
}

/// How long a promotion lets a replica apply what it received.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// The site's `on_no_replica_ack` in the database's terms.
pub(crate) fn replica_ack(ack: site::ReplicaAck) -> db::failover::OnNoReplicaAck {
    match ack {
        site::ReplicaAck::Wait => db::failover::OnNoReplicaAck::Wait,
        site::ReplicaAck::Fallback => db::failover::OnNoReplicaAck::Fallback,
    }
}

/// One server's connection settings. The password comes from the environment variable
/// `password_env` names when it is set (so the site file holds no secret), else from the URL.
fn db_server(m: &site::Mysql, server: &site::DbServer) -> anyhow::Result<db::Server> {
    let password = match &m.password_env {
        Some(var) => std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "the site file's [database] takes the password from the environment variable \
                 {var}, which is not set: export {var}=... before starting"
            )
        })?,
        None => server.password.clone().unwrap_or_default(),
    };
    Ok(db::Server {
        name: server.name.clone(),
        host: server.host.clone(),
        port: server.port,
        user: server.user.clone(),
        password,
        database: server.database.clone(),
    })
}

/// The certificate and key the site's TLS listeners serve: its own files, or the
/// self-signed pair in the state directory (made if missing).
pub(crate) fn cert_files(site: &Site) -> anyhow::Result<net::tls::TlsFiles> {
    match &site.tls.files {
        Some(files) => Ok(net::tls::TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        None => net::tls::ensure_self_signed(&site.state_dir, &site.name),
    }
}

/// Only for messages: where the certificate the site serves is.
pub(crate) fn cert_path(site: &Site) -> PathBuf {
    match &site.tls.files {
        Some(files) => files.cert.clone(),
        None => net::tls::self_signed_files(&site.state_dir, &site.name).cert,
    }
}

// The site file's settings in `net`'s terms: the same values, `net` knowing nothing of
// the file they came from.

fn algorithm(a: site::Algorithm) -> net::upstream::Algorithm {
    match a {
        site::Algorithm::RoundRobin => net::upstream::Algorithm::RoundRobin,
        site::Algorithm::LeastConn => net::upstream::Algorithm::LeastConn,
        site::Algorithm::Source => net::upstream::Algorithm::Source,
    }
}

fn health(h: &site::HealthCheck) -> net::upstream::HealthCheck {
    net::upstream::HealthCheck {
        path: h.path.clone(),
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
    }
}

fn timeouts(t: &site::Timeouts) -> net::upstream::Timeouts {
    net::upstream::Timeouts {
        connect: t.connect,
        client: t.client,
        server: t.server,
        keepalive: t.keepalive,
        tunnel: t.tunnel,
        drain: t.drain,
    }
}

fn log_format(f: site::LogFormat) -> net::access_log::LogFormat {
    match f {
        site::LogFormat::Combined => net::access_log::LogFormat::Combined,
        site::LogFormat::Json => net::access_log::LogFormat::Json,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_site_file_and_net_agree_on_the_per_client_default() {
        assert_eq!(
            site::DEFAULT_MAX_CONNECTIONS_PER_CLIENT as usize,
            net::budget::DEFAULT_PER_CLIENT
        );
    }
}
