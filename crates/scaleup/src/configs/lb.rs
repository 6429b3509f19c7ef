//! The load balancer's configuration: its pool and balancing settings, its place in
//! the cluster, and the site as its dashboard draws it.

use std::net::SocketAddr;

use site::Site;

/// Load balancer `name`'s configuration; `config_hash` (of the site file's bytes) goes
/// in its heartbeats.
pub(crate) fn lb(
    site: &Site,
    name: &str,
    config_hash: cluster::wire::ConfigHash,
) -> anyhow::Result<lb::Config> {
    anyhow::ensure!(
        site.lb(name).is_some(),
        "`{name}` is not a load balancer of this site"
    );
    let webs: Vec<&site::WebNode> = site
        .balancer
        .servers
        .iter()
        .filter_map(|s| site.web(s))
        .collect();
    let tls_listen = site.lb(name).and_then(|l| l.tls_listen);
    let ends_tls = tls_listen.is_some() && site.balancer.tls_mode == site::TlsMode::Http;
    let config = lb::Config {
        name: name.to_string(),
        balancer: balancing(&site.balancer),
        servers: webs
            .iter()
            .map(|w| net::upstream::Server {
                name: w.node.name.clone(),
                addr: w.node.listen,
                weight: w.weight,
            })
            .collect(),
        servers_tls: webs.iter().map(|w| w.tls_listen).collect(),
        // Clients of the floating address are sent to the floating HTTPS port.
        tls_port: match &site.cluster {
            Some(site::Cluster {
                floating:
                    site::Floating::Local {
                        tls_address: Some(tls),
                        ..
                    },
                ..
            }) => Some(tls.port()),
            _ => tls_listen.map(|a| a.port()),
        },
        tls: if ends_tls {
            Some(super::cert_files(site)?)
        } else {
            None
        },
        cluster: membership(site, name, config_hash)?,
        admin_token: site.admin_token().into(),
        access_log: site.lb(name).and_then(|l| l.access_log.clone()),
        log_format: super::log_format(site.log_format),
        topology: topology(site),
    };

    Ok(config)
}

/// The site's `[balancer]` in the pool's terms.
fn balancing(b: &site::Balancer) -> lb::Balancing {
    lb::Balancing {
        algorithm: super::algorithm(b.algorithm),
        health: super::health(&b.health),
        timeouts: super::timeouts(&b.timeouts),
        max_connections: b.max_connections,
        max_connections_per_client: b.max_connections_per_client as usize,
        retries: b.retries,
        https_redirect: b.https_redirect,
        trusted_proxies: b
            .trusted_proxies
            .iter()
            .map(|c| net::headers::Block {
                addr: c.addr,
                prefix: c.prefix,
            })
            .collect(),
        slowstart: b.slowstart,
    }
}

/// Load balancer `name`'s place in the cluster, if the site has one; `config_hash` goes
/// in its heartbeats.
fn membership(
    site: &Site,
    name: &str,
    config_hash: cluster::wire::ConfigHash,
) -> anyhow::Result<Option<lb::Membership>> {
    let Some(c) = &site.cluster else {
        return Ok(None);
    };
    let me = site
        .lb(name)
        .ok_or_else(|| anyhow::anyhow!("`{name}` is not a load balancer"))?;
    let peer = site
        .lbs
        .iter()
        .find(|l| l.node.name != name)
        .ok_or_else(|| anyhow::anyhow!("the cluster needs a second load balancer"))?;
    let heartbeat = |lb: &site::LbNode| {
        lb.heartbeat.ok_or_else(|| {
            anyhow::anyhow!("load balancer `{}` has no heartbeat address", lb.node.name)
        })
    };
    let secret = match &c.secret {
        Some(secret) => secret.resolve().map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let (takeover, floating, only_while_active) = match &c.floating {
        site::Floating::Local { address, .. } => (cluster::Takeover::Local, Some(*address), true),
        site::Floating::Linux {
            interface,
            address,
            prefix,
            port,
        } => (
            cluster::Takeover::Linux {
                interface: interface.clone(),
                address: *address,
                prefix: *prefix,
            },
            Some(SocketAddr::new(*address, *port)),
            false,
        ),
        site::Floating::Hook {
            on_active,
            on_passive,
            ..
        } => (
            cluster::Takeover::Hook {
                on_active: on_active.clone(),
                on_passive: on_passive.clone(),
            },
            None,
            false,
        ),
    };
    Ok(Some(lb::Membership {
        member: cluster::Config {
            name: name.to_string(),
            priority: me.priority,
            heartbeat: heartbeat(me)?,
            peer_name: peer.node.name.clone(),
            peer_heartbeat: heartbeat(peer)?,
            secret,
            interval: c.interval,
            dead_after: c.dead_after,
            preempt: c.preempt,
            takeover,
            config_hash,
        },
        floating,
        tls_floating: match &c.floating {
            site::Floating::Local { tls_address, .. } => *tls_address,
            _ => None,
        },
        only_while_active,
    }))
}

/// The nodes of `site`, as the dashboard draws them.
fn topology(site: &Site) -> lb::Topology {
    let member = |node: &site::Node, to: Vec<String>| lb::Member {
        name: node.name.clone(),
        listen: node.listen,
        admin: node.admin,
        to,
    };
    let database = match &site.database {
        site::Database::Sqlite { path } => vec![lb::DbMember {
            name: "sqlite".into(),
            role: "embedded".into(),
            address: path.display().to_string(),
        }],
        site::Database::Mysql(m) => std::iter::once((&m.primary, "primary"))
            .chain(m.replicas.iter().map(|r| (r, "replica")))
            .map(|(s, role)| lb::DbMember {
                name: s.name.clone(),
                role: role.into(),
                address: s.address(),
            })
            .collect(),
    };
    lb::Topology {
        site: site.name.clone(),
        floating: site.cluster.as_ref().map(|c| c.floating.describe()),
        lbs: site
            .lbs
            .iter()
            .map(|l| member(&l.node, site.balancer.servers.clone()))
            .collect(),
        webs: site
            .webs
            .iter()
            .map(|w| member(&w.node, w.apps.clone()))
            .collect(),
        apps: site
            .apps
            .iter()
            .map(|a| member(&a.node, Vec::new()))
            .collect(),
        database,
    }
}
