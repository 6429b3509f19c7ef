//! `scaleup systemd NODE --site FILE`: a systemd unit that runs one node on a server
//! of its own, as `scaleup run` does by hand.
//!
//! What the unit says, and why:
//!
//! - `Type=notify`: the node sends `READY=1` once its listeners answer
//!   ([`crate::notify`]), so `systemctl start` and units ordered after it wait for a
//!   node that serves, not for a process that exists;
//! - `NotifyAccess=all`: after `scaleup upgrade` the node's new process, started by
//!   the old one, says `MAINPID=` (and `READY=1`) before the old one exits;
//! - `ExecReload` sends SIGHUP, the node's reload signal; `Restart=on-failure` brings
//!   back a node that crashed, while a clean stop stays stopped;
//! - `LimitNOFILE=1048576`: each proxied connection holds two descriptors and the node
//!   budgets its connections from this limit (`net::budget`); systemd's default soft
//!   limit of 1024 would cap a load balancer at a few hundred clients. 1048576 is the
//!   kernel's default ceiling (`fs.nr_open`), the most a unit can set without a sysctl,
//!   and costs nothing until descriptors are used;
//! - capabilities only where the node needs them: `CAP_NET_ADMIN` and `CAP_NET_RAW`
//!   for a load balancer of a linux-mode cluster (it adds the floating IP over netlink
//!   and announces it with gratuitous ARP on a packet socket), `CAP_NET_BIND_SERVICE`
//!   when one of its ports is below 1024; every other node runs with an empty
//!   bounding set;
//! - `User=scaleup` rather than `DynamicUser=yes`: the site file (when it holds a
//!   secret) and the TLS key must be readable by the node and by nobody else, which a
//!   fixed account allows with plain `root:scaleup 0640` files; a dynamic user has no
//!   name to give those files to, short of systemd's credential machinery;
//! - hardening: `NoNewPrivileges`, `ProtectSystem=strict` (the whole file system
//!   read-only but for the state directory and what the site writes), `ProtectHome`,
//!   `PrivateTmp` and the like, with `StateDirectory=` when the site's `state_dir` is
//!   under `/var/lib` (systemd creates it, owned by the user, mode 0700), else
//!   `ReadWritePaths=` it;
//! - secrets from the environment (`EnvironmentFile=`, read by systemd as root, so it
//!   can be `root:root 0600`): the cluster secret, the admin token, the database
//!   password, the application key, whichever the site takes from variables.
//!
//! What needs the operator (a state directory elsewhere, a path systemd hides, a
//! secret written in the site file) comes back as notes, printed on standard error
//! and, as comments, in the unit.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use site::{Database, Floating, Role, Secret, Site, TlsMode};

/// The kernel's default `fs.nr_open`: the highest `LimitNOFILE` a unit can set
/// without raising it first.
pub const LIMIT_NOFILE: u64 = 1_048_576;

/// Where systemd keeps services' state: `StateDirectory=` is relative to it.
const STATE_ROOT: &str = "/var/lib";
/// Where systemd keeps services' logs: `LogsDirectory=` is relative to it.
const LOGS_ROOT: &str = "/var/log";

/// The account the unit runs the node as when the command line names none.
pub const DEFAULT_USER: &str = "scaleup";

/// A rendered unit and what the operator must do for it to work.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The unit file's text.
    pub text: String,
    /// Things to act on (also in the text, as comments).
    pub notes: Vec<String>,
}

/// What the unit is made from besides the site.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `scaleup` binary (absolute).
    pub binary: PathBuf,
    /// The site file (absolute).
    pub site_file: PathBuf,
    /// The account the node runs as.
    pub user: String,
}

/// `scaleup systemd NODE --site FILE [--user USER]`: prints the unit on standard
/// output and the notes on standard error.
pub fn print(node: &str, site_file: &Path, user: &str) -> anyhow::Result<()> {
    let site = site::load(site_file)?;
    let site_file = std::fs::canonicalize(site_file)?;
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| anyhow::anyhow!("cannot tell where this scaleup binary is: {e}"))?;
    let unit = render(
        &site,
        node,
        &Options {
            binary,
            site_file,
            user: user.to_string(),
        },
    )?;
    print!("{}", unit.text);
    for note in &unit.notes {
        eprintln!("scaleup systemd: note: {note}");
    }
    Ok(())
}

/// The unit for node `name` of `site`.
pub fn render(site: &Site, name: &str, options: &Options) -> anyhow::Result<Unit> {
    let role = site.node(name).map(|(role, _)| role).ok_or_else(|| {
        let names: Vec<&str> = site.nodes().map(|(_, n)| n.name.as_str()).collect();
        anyhow::anyhow!(
            "there is no node called `{name}` in {}; its nodes are: {}",
            options.site_file.display(),
            names.join(", ")
        )
    })?;
    anyhow::ensure!(
        options.binary.is_absolute() && options.site_file.is_absolute(),
        "the unit needs absolute paths (binary {}, site file {})",
        options.binary.display(),
        options.site_file.display()
    );
    anyhow::ensure!(
        is_account_name(&options.user),
        "`{}` is not a user name systemd accepts (letters, digits, `_`, `-`; not starting \
         with a digit or `-`)",
        options.user
    );
    let mut notes = Vec::new();
    let state_dir = normalize(&site.state_dir);

    // Capabilities.
    let linux_lb = role == Role::Lb
        && matches!(
            site.cluster.as_ref().map(|c| &c.floating),
            Some(Floating::Linux { .. })
        );
    let mut caps = BTreeSet::new();
    if linux_lb {
        caps.insert("CAP_NET_ADMIN");
        caps.insert("CAP_NET_RAW");
    }
    let low: Vec<SocketAddr> = bound_addresses(site, role, name)
        .into_iter()
        .filter(|a| a.port() != 0 && a.port() < 1024)
        .collect();
    if !low.is_empty() {
        caps.insert("CAP_NET_BIND_SERVICE");
    }
    let caps: Vec<&str> = caps.into_iter().collect();

    // What the node writes.
    let mut state_directory = None;
    let mut logs_directories = Vec::new();
    let mut read_write = Vec::new();
    match relative_to(&state_dir, STATE_ROOT) {
        Some(rel) => state_directory = Some(rel),
        None => {
            notes.push(format!(
                "the site's state_dir {0} is not under {STATE_ROOT}, so systemd cannot make \
                 it (StateDirectory=); the unit lets the node write it (ReadWritePaths=): \
                 create it first, owned by {1} and private (install -d -o {1} -m 700 {0}), \
                 or set state_dir = \"{STATE_ROOT}/scaleup\" in the site file",
                state_dir.display(),
                options.user
            ));
            read_write.push(state_dir.clone());
        }
    }
    let mut written_dirs = Vec::new();
    // Every role writes an access log (`scaleup trace` reads them all).
    let access_log = match role {
        Role::Lb => site.lb(name).and_then(|l| l.access_log.as_deref()),
        Role::Web => site.web(name).and_then(|w| w.access_log.as_deref()),
        Role::App => site.app(name).and_then(|a| a.access_log.as_deref()),
    };
    if let Some(dir) = access_log.and_then(Path::parent) {
        written_dirs.push(("the access log", normalize(dir)));
    }
    if let (Role::App, Database::Sqlite { path }) = (role, &site.database) {
        if let Some(dir) = path.parent() {
            // SQLite writes its journal next to the file: the folder must be writable.
            written_dirs.push(("the SQLite database", normalize(dir)));
        }
    }
    for (what, dir) in written_dirs {
        if dir.starts_with(&state_dir) {
            continue;
        }
        match relative_to(&dir, LOGS_ROOT) {
            Some(rel) if what == "the access log" => logs_directories.push(rel),
            _ => {
                notes.push(format!(
                    "{what} is in {0}, outside the state directory: the unit lets the node \
                     write there (ReadWritePaths=), which must exist and be writable by {1}",
                    dir.display(),
                    options.user
                ));
                read_write.push(dir);
            }
        }
    }
    read_write.sort();
    read_write.dedup();
    logs_directories.sort();
    logs_directories.dedup();

    // Paths the sandbox hides: the node would not find them.
    let mut read = vec![("the site file", options.site_file.clone())];
    read.push(("the state directory", state_dir.clone()));
    if let Some(root) = site.web(name).and_then(|w| w.root.clone()) {
        read.push(("the document root", root));
    }
    let ends_tls = ends_tls(site, role, name);
    if let (true, Some(files)) = (ends_tls, &site.tls.files) {
        read.push(("the certificate", files.cert.clone()));
        read.push(("the TLS key", files.key.clone()));
        notes.push(format!(
            "{name} ends TLS with {}: make it readable by {1} only (chown root:{1}, chmod 640)",
            files.key.display(),
            options.user
        ));
    }
    for (what, path) in &read {
        if let Some(hidden) = hidden_by_sandbox(path) {
            notes.push(format!(
                "{what} {} is under {hidden}, which the unit hides from the node \
                 (ProtectHome=yes / PrivateTmp=yes): move it, e.g. to /etc/scaleup or {STATE_ROOT}",
                path.display()
            ));
        }
    }

    // Secrets from the environment.
    let mut env_vars: Vec<(String, &str)> = Vec::new();
    if let Some(var) = &site.admin_token_env {
        env_vars.push((var.clone(), "the admin token (admin writes)"));
    }
    let mut literal_secret = false;
    if role == Role::Lb {
        match site.cluster.as_ref().and_then(|c| c.secret.as_ref()) {
            Some(Secret::Env(var)) => env_vars.push((
                var.clone(),
                "the cluster secret (same on both load balancers)",
            )),
            Some(Secret::Literal(_)) => literal_secret = true,
            None => {}
        }
    }
    if role == Role::App {
        if let Database::Mysql(m) = &site.database {
            if let Some(var) = &m.password_env {
                env_vars.push((var.clone(), "the database password"));
            }
            if m.managed {
                notes.push(
                    "the site's database is `managed = true`, which only `scaleup up` starts: \
                     on servers, run MariaDB under its own unit and order this one after it"
                        .into(),
                );
            }
        }
        if site.apps.len() > 1 {
            env_vars.push((
                app::KEY_ENV.to_string(),
                "the application key, the same on every app server (openssl rand -base64 32)",
            ));
        }
    }
    if literal_secret {
        notes.push(format!(
            "the cluster secret is written in the site file: make {0} readable by root and \
             {1} only (chown root:{1}, chmod 640), or move the secret to the environment \
             (secret_env = \"SCALEUP_CLUSTER_SECRET\" and a line in the environment file)",
            options.site_file.display(),
            options.user
        ));
    }
    let env_file = options
        .site_file
        .parent()
        .unwrap_or(Path::new("/etc/scaleup"))
        .join("scaleup.env");

    if role == Role::Lb {
        if let Some(Floating::Hook { .. }) = site.cluster.as_ref().map(|c| &c.floating) {
            notes.push(format!(
                "the cluster's on_active/on_passive hooks run as {} inside this unit's sandbox \
                 (no new privileges, read-only system, no /home): give them what they need with \
                 Environment= (credentials) and ReadWritePaths=, not sudo",
                options.user
            ));
        }
    }

    // The unit.
    let mut u = String::new();
    let command = format!(
        "scaleup systemd {name} --site {}",
        options.site_file.display()
    );
    let _ = writeln!(
        u,
        "# {} {name} of {}, generated by `{command}`",
        role_words(role),
        site.name
    );
    let _ = writeln!(
        u,
        "# (scaleup {}). Install it as /etc/systemd/system/scaleup-{name}.service, then",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        u,
        "# systemctl daemon-reload && systemctl enable --now scaleup-{name}"
    );
    let _ = writeln!(
        u,
        "# It runs as user {0}: useradd --system --no-create-home --shell /usr/sbin/nologin {0}",
        options.user
    );
    for note in &notes {
        let _ = writeln!(u, "#");
        for line in wrap(&format!("NOTE: {note}"), 86) {
            let _ = writeln!(u, "# {line}");
        }
    }
    let _ = writeln!(u);
    let _ = writeln!(u, "[Unit]");
    let _ = writeln!(
        u,
        "Description=scaleup {name}: {} of {}",
        role_words(role),
        site.name
    );
    let site_file = options.site_file.display().to_string();
    // A URL cannot hold a space as is; such a path is only in ExecStart then.
    if !site_file.chars().any(char::is_whitespace) {
        let _ = writeln!(u, "Documentation=file://{}", escape_value(&site_file));
    }
    let _ = writeln!(u, "Wants=network-online.target");
    let _ = writeln!(u, "After=network-online.target");
    let _ = writeln!(u);
    let _ = writeln!(u, "[Service]");
    let _ = writeln!(u, "# READY=1 comes once the node's listeners answer.");
    let _ = writeln!(u, "Type=notify");
    let _ = writeln!(
        u,
        "# `scaleup upgrade` starts a new process that takes the node's sockets and says\n\
         # MAINPID= (it is not the main process yet when it does)."
    );
    let _ = writeln!(u, "NotifyAccess=all");
    let _ = writeln!(
        u,
        "ExecStart={} run {} --site {}",
        quote_arg(&options.binary.display().to_string()),
        quote_arg(name),
        quote_arg(&options.site_file.display().to_string())
    );
    let _ = writeln!(u, "ExecReload=/bin/kill -HUP $MAINPID");
    let _ = writeln!(u, "Restart=on-failure");
    let _ = writeln!(u, "RestartSec=1s");
    let _ = writeln!(
        u,
        "# A clean stop drains open requests (and hands the floating address over)."
    );
    let _ = writeln!(u, "TimeoutStopSec=30s");
    let _ = writeln!(
        u,
        "# Connections are budgeted from the open-file limit (two descriptors each)."
    );
    let _ = writeln!(u, "LimitNOFILE={LIMIT_NOFILE}");
    let _ = writeln!(u, "User={}", options.user);
    let _ = writeln!(u, "Group={}", options.user);
    if !env_vars.is_empty() {
        let _ = writeln!(
            u,
            "# Secrets, one VAR=value a line, in a file only root reads (chmod 600):"
        );
        for (var, what) in &env_vars {
            let _ = writeln!(u, "#   {var}: {what}");
        }
        let _ = writeln!(
            u,
            "EnvironmentFile={}",
            escape_value(&env_file.display().to_string())
        );
    }
    if caps.is_empty() {
        let _ = writeln!(u, "CapabilityBoundingSet=");
    } else {
        let mut why = Vec::new();
        if linux_lb {
            why.push("the floating IP (netlink) and gratuitous ARP (packet socket)");
        }
        if !low.is_empty() {
            why.push("ports below 1024");
        }
        let _ = writeln!(u, "# For {}.", why.join("; "));
        let _ = writeln!(u, "AmbientCapabilities={}", caps.join(" "));
        let _ = writeln!(u, "CapabilityBoundingSet={}", caps.join(" "));
    }
    let _ = writeln!(u, "NoNewPrivileges=yes");
    let _ = writeln!(u, "ProtectSystem=strict");
    let _ = writeln!(u, "ProtectHome=yes");
    let _ = writeln!(u, "PrivateTmp=yes");
    let _ = writeln!(u, "PrivateDevices=yes");
    let _ = writeln!(u, "ProtectKernelTunables=yes");
    let _ = writeln!(u, "ProtectKernelModules=yes");
    let _ = writeln!(u, "ProtectKernelLogs=yes");
    let _ = writeln!(u, "ProtectControlGroups=yes");
    let _ = writeln!(u, "ProtectClock=yes");
    let _ = writeln!(u, "ProtectHostname=yes");
    let _ = writeln!(u, "RestrictNamespaces=yes");
    let _ = writeln!(u, "RestrictRealtime=yes");
    let _ = writeln!(u, "RestrictSUIDSGID=yes");
    let _ = writeln!(u, "LockPersonality=yes");
    let _ = writeln!(u, "SystemCallArchitectures=native");
    let families = if linux_lb {
        // Netlink moves the address, a packet socket sends the ARP.
        "AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_PACKET"
    } else {
        // AF_UNIX for the notification to systemd.
        "AF_INET AF_INET6 AF_UNIX"
    };
    let _ = writeln!(u, "RestrictAddressFamilies={families}");
    let _ = writeln!(u, "UMask=0077");
    if let Some(rel) = &state_directory {
        let _ = writeln!(
            u,
            "# The site's state_dir, {}: made by systemd, owned by {}.",
            state_dir.display(),
            options.user
        );
        let _ = writeln!(u, "StateDirectory={}", escape_value(rel));
        let _ = writeln!(u, "StateDirectoryMode=0700");
    }
    for rel in &logs_directories {
        let _ = writeln!(u, "LogsDirectory={}", escape_value(rel));
    }
    for dir in &read_write {
        let _ = writeln!(
            u,
            "ReadWritePaths={}",
            escape_value(&dir.display().to_string())
        );
    }
    let _ = writeln!(u);
    let _ = writeln!(u, "[Install]");
    let _ = writeln!(u, "WantedBy=multi-user.target");
    Ok(Unit { text: u, notes })
}

fn role_words(role: Role) -> &'static str {
    match role {
        Role::Lb => "load balancer",
        Role::Web => "web server",
        Role::App => "application server",
    }
}

/// Every address node `name` binds, for the low-port check.
fn bound_addresses(site: &Site, role: Role, name: &str) -> Vec<SocketAddr> {
    let (_, node) = site.node(name).expect("checked by the caller");
    let mut out = vec![node.bind, node.admin];
    match role {
        Role::Lb => {
            let lb = site.lb(name).expect("role checked");
            out.extend(lb.tls_listen);
            out.extend(lb.heartbeat);
            match site.cluster.as_ref().map(|c| &c.floating) {
                Some(Floating::Local {
                    address,
                    tls_address,
                }) => {
                    out.push(*address);
                    out.extend(*tls_address);
                }
                Some(Floating::Linux { address, port, .. }) => {
                    out.push(SocketAddr::new(*address, *port))
                }
                _ => {}
            }
        }
        Role::Web => out.extend(site.web(name).and_then(|w| w.tls_listen)),
        Role::App => {}
    }
    out
}

/// Whether node `name` ends TLS itself, and so reads the site's key.
fn ends_tls(site: &Site, role: Role, name: &str) -> bool {
    match role {
        Role::Web => site.web(name).is_some_and(|w| w.tls_listen.is_some()),
        Role::Lb => {
            site.balancer.tls_mode == TlsMode::Http
                && (site.lb(name).is_some_and(|l| l.tls_listen.is_some())
                    || matches!(
                        site.cluster.as_ref().map(|c| &c.floating),
                        Some(Floating::Local {
                            tls_address: Some(_),
                            ..
                        })
                    ))
        }
        Role::App => false,
    }
}

/// `path` relative to `root` (`/var/lib/scaleup` under `/var/lib` is `scaleup`), when
/// it is strictly inside it (`/var/lib/../srv` is not).
fn relative_to(path: &Path, root: &str) -> Option<String> {
    let path = normalize(path);
    let rel = path.strip_prefix(root).ok()?;
    let rel = rel.to_str()?;
    (!rel.is_empty()).then(|| rel.trim_end_matches('/').to_string())
}

/// The folder of `path` the sandbox hides, if any.
fn hidden_by_sandbox(path: &Path) -> Option<&'static str> {
    let path = normalize(path);
    ["/home", "/root", "/run/user", "/tmp", "/var/tmp"]
        .into_iter()
        .find(|dir| path.starts_with(dir))
}

/// `path` with `.` and `..` folded away by their names alone (the site file's paths
/// are joined to its folder as written: `/etc/scaleup/../state`), so that what the
/// unit says is where the node will look.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether systemd takes `name` for `User=` (its "strict" user-name rules).
fn is_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 31
}

/// A value for a unit setting: `%` is systemd's specifier character, so it is doubled.
fn escape_value(value: &str) -> String {
    value.replace('%', "%%")
}

/// One argument of `ExecStart=`: quoted when it holds what systemd would split or
/// expand (spaces, quotes, `\`, `$`, `%`, `;`).
fn quote_arg(arg: &str) -> String {
    let arg = escape_value(arg).replace('$', "$$");
    if arg
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        arg
    }
}

/// `text` cut into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example site as installed on servers (shared with `tests/systemd.rs`).
    const SERVERS: &str = include_str!("../../../examples/servers.toml");

    #[test]
    fn a_load_balancer_or_app_access_log_under_var_log_gets_a_logs_directory() {
        let text = SERVERS
            .replacen(
                "heartbeat = \"192.0.2.11:7000\"\n",
                "heartbeat = \"192.0.2.11:7000\"\naccess_log = \"/var/log/scaleup/lb1-access.log\"\n",
                1,
            )
            .replacen(
                "admin = \"127.0.0.1:9014\"\n",
                "admin = \"127.0.0.1:9014\"\naccess_log = \"/var/log/scaleup/app1-access.log\"\n",
                1,
            );
        for node in ["lb1", "app1"] {
            let u = unit(&text, node);
            assert_eq!(values(&u, "LogsDirectory"), ["scaleup"], "{}", u.text);
        }
        // By default their logs are in the state directory, which the unit makes.
        assert!(values(&unit(SERVERS, "lb2"), "LogsDirectory").is_empty());
        assert!(values(&unit(SERVERS, "app2"), "LogsDirectory").is_empty());
    }

    fn options() -> Options {
        Options {
            binary: "/usr/local/bin/scaleup".into(),
            site_file: "/etc/scaleup/site.toml".into(),
            user: DEFAULT_USER.into(),
        }
    }

    fn unit(text: &str, node: &str) -> Unit {
        let site = site::parse(text, "test", Path::new("/etc/scaleup")).unwrap();
        render(&site, node, &options()).unwrap()
    }

    /// The values of `key=` lines in the unit, in order.
    fn values<'a>(unit: &'a Unit, key: &str) -> Vec<&'a str> {
        unit.text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn every_unit_is_notify_restarts_on_failure_reloads_with_hup_and_is_hardened() {
        for node in ["lb1", "web1", "app1"] {
            let u = unit(SERVERS, node);
            let one = |key: &str| {
                let v = values(&u, key);
                assert_eq!(v.len(), 1, "{key} in {node}: {}", u.text);
                v[0].to_string()
            };
            assert_eq!(one("Type"), "notify");
            assert_eq!(
                one("ExecStart"),
                format!("/usr/local/bin/scaleup run {node} --site /etc/scaleup/site.toml")
            );
            assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
            assert_eq!(one("NotifyAccess"), "all");
            assert_eq!(one("Restart"), "on-failure");
            assert_eq!(one("LimitNOFILE"), "1048576");
            assert_eq!(one("User"), "scaleup");
            assert_eq!(one("NoNewPrivileges"), "yes");
            assert_eq!(one("ProtectSystem"), "strict");
            assert_eq!(one("ProtectHome"), "yes");
            assert_eq!(one("PrivateTmp"), "yes");
            assert_eq!(one("StateDirectory"), "scaleup");
            assert_eq!(one("StateDirectoryMode"), "0700");
            assert!(values(&u, "ReadWritePaths").is_empty(), "{}", u.text);
            assert!(u.text.contains("[Install]\nWantedBy=multi-user.target"));
        }
    }

    #[test]
    fn a_linux_cluster_load_balancer_gets_net_admin_and_raw_and_no_one_else_does() {
        let lb = unit(SERVERS, "lb1");
        assert_eq!(
            values(&lb, "AmbientCapabilities"),
            // Port 80 of the floating address too.
            ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"]
        );
        assert_eq!(
            values(&lb, "CapabilityBoundingSet"),
            ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW"]
        );
        assert!(values(&lb, "RestrictAddressFamilies")[0].contains("AF_NETLINK AF_PACKET"));
        assert_eq!(values(&lb, "EnvironmentFile"), ["/etc/scaleup/scaleup.env"]);
        assert!(lb
            .text
            .contains("#   SCALEUP_CLUSTER_SECRET: the cluster secret"));
        assert!(lb.text.contains("#   SCALEUP_ADMIN_TOKEN: the admin token"));
        assert!(!lb.text.contains("FOOBAR_DB_PASSWORD"), "{}", lb.text);

        // The web server binds 80 and 443: only that capability.
        let web = unit(SERVERS, "web1");
        assert_eq!(
            values(&web, "AmbientCapabilities"),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(values(&web, "LogsDirectory"), ["scaleup"]);
        assert!(!values(&web, "RestrictAddressFamilies")[0].contains("AF_PACKET"));
        assert!(
            web.notes
                .iter()
                .any(|n| n.contains("/etc/scaleup/www.foobar.com.key")),
            "{:?}",
            web.notes
        );

        // The app server on 8000: nothing at all.
        let app = unit(SERVERS, "app1");
        assert!(
            values(&app, "AmbientCapabilities").is_empty(),
            "{}",
            app.text
        );
        assert_eq!(values(&app, "CapabilityBoundingSet"), [""]);
        assert!(app
            .text
            .contains("#   FOOBAR_DB_PASSWORD: the database password"));
        assert!(app
            .text
            .contains("#   SCALEUP_APP_KEY: the application key"));
        assert!(!app.text.contains("SCALEUP_CLUSTER_SECRET"));
    }

    #[test]
    fn a_local_cluster_on_high_ports_needs_no_capability() {
        let text = site::default_site(8080, "/var/lib/scaleup", "a secret in the file");
        let lb = unit(&text, "lb1");
        assert_eq!(values(&lb, "CapabilityBoundingSet"), [""], "{}", lb.text);
        assert!(values(&lb, "AmbientCapabilities").is_empty());
        // The default site writes its secret into the file: said, with what to do.
        assert!(
            lb.notes
                .iter()
                .any(|n| n.contains("cluster secret is written in the site file")),
            "{:?}",
            lb.notes
        );
        assert!(
            !lb.text.contains("the cluster secret (same on both"),
            "{}",
            lb.text
        );
    }

    #[test]
    fn a_state_dir_outside_var_lib_is_made_writable_and_said() {
        let text = SERVERS.replace("/var/lib/scaleup", "/srv/foobar");
        let app = unit(&text, "app1");
        assert!(values(&app, "StateDirectory").is_empty(), "{}", app.text);
        assert_eq!(values(&app, "ReadWritePaths"), ["/srv/foobar"]);
        assert!(
            app.notes[0].contains("not under /var/lib"),
            "{:?}",
            app.notes
        );
        assert!(app
            .text
            .contains("# NOTE: the site's state_dir /srv/foobar"));
        // A nested folder under /var/lib is still systemd's to make.
        let text = SERVERS.replace("/var/lib/scaleup", "/var/lib/scaleup/www");
        assert_eq!(
            values(&unit(&text, "app1"), "StateDirectory"),
            ["scaleup/www"]
        );
    }

    #[test]
    fn paths_the_sandbox_hides_are_said() {
        let u = {
            let site = site::parse(SERVERS, "test", Path::new("/etc/scaleup")).unwrap();
            let mut options = options();
            options.site_file = "/home/ops/site.toml".into();
            render(&site, "web1", &options).unwrap()
        };
        assert!(
            u.notes
                .iter()
                .any(|n| n.contains("/home/ops/site.toml is under /home")),
            "{:?}",
            u.notes
        );
    }

    #[test]
    fn odd_paths_are_quoted_and_unknown_nodes_refused() {
        let site = site::parse(SERVERS, "test", Path::new("/etc/scaleup")).unwrap();
        let mut options = options();
        options.site_file = "/etc/scale up/100%.toml".into();
        let u = render(&site, "app1", &options).unwrap();
        assert_eq!(
            values(&u, "ExecStart"),
            ["/usr/local/bin/scaleup run app1 --site \"/etc/scale up/100%%.toml\""]
        );
        let e = render(&site, "db1", &self::tests::options()).unwrap_err();
        assert!(e.to_string().contains("its nodes are: lb1, lb2"), "{e}");
        let mut options = self::tests::options();
        options.user = "root; rm".into();
        assert!(render(&site, "app1", &options).is_err());
    }
}
