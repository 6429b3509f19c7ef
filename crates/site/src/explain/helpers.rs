//! Small helpers the parts of the explanation share: addresses, DNS records, words.

use super::*;

/// Listen, bind (when different) and admin addresses of a node.
pub(super) fn node_address(node: &Node) -> String {
    let mut s = node.listen.to_string();
    if node.bind != node.listen {
        let _ = write!(s, " (binds {})", node.bind);
    }
    let _ = write!(s, ", admin {}", node.admin);
    s
}

/// The DNS record that points at `addr` (DNS carries no port).
pub(super) fn dns_record(addr: &SocketAddr) -> String {
    ip_record(addr.ip())
}

/// The DNS record that points at `ip`.
pub(super) fn ip_record(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("A {ip}"),
        IpAddr::V6(ip) => format!("AAAA {ip}"),
    }
}

/// The DNS record that points at the floating address, or what stands for it when
/// only the hooks know the address.
pub(super) fn floating_record(f: &Floating) -> String {
    match f {
        Floating::Local { address, .. } => dns_record(address),
        Floating::Linux { address, .. } => ip_record(*address),
        Floating::Hook {
            address: Some(a), ..
        } => {
            if let Ok(addr) = a.parse::<SocketAddr>() {
                dns_record(&addr)
            } else if let Ok(ip) = a.parse::<IpAddr>() {
                ip_record(ip)
            } else {
                a.clone()
            }
        }
        Floating::Hook { address: None, .. } => "the address the hooks move".into(),
    }
}

/// The word for the cluster's mode in the site file.
pub(super) fn mode_name(f: &Floating) -> &'static str {
    match f {
        Floating::Local { .. } => "local",
        Floating::Linux { .. } => "linux",
        Floating::Hook { .. } => "hook",
    }
}

/// How the floating address moves, in a few words.
pub(super) fn takeover_words(f: &Floating) -> String {
    match f {
        Floating::Local { .. } => "the active one binds it".into(),
        Floating::Linux { .. } => "moved with gratuitous ARP".into(),
        Floating::Hook { .. } => "moved by the on_active/on_passive hooks".into(),
    }
}

/// The heartbeat link's label: how often, and whether it is authenticated.
pub(super) fn heartbeat_words(c: &Cluster) -> String {
    let auth = if c.secret.is_some() {
        "authenticated"
    } else {
        "NOT authenticated"
    };
    format!(
        "heartbeat every {}, {auth}",
        humantime::format_duration(c.interval)
    )
}

/// About how long the passive load balancer waits for a silent active one.
pub(super) fn dead_time(c: &Cluster) -> Duration {
    c.interval
        .checked_mul(c.dead_after)
        .unwrap_or(Duration::MAX)
}

pub(super) fn join<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}
