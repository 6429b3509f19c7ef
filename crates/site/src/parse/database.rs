//! `[database]`: SQLite or a MySQL/MariaDB primary with replicas, and what a
//! managed local pair needs.

use super::*;

impl Checker<'_> {
    pub(super) fn database(&mut self, d: &RawDatabase, state_dir: &Path) -> Database {
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
                    on_no_replica_ack: self.replica_ack(d.on_no_replica_ack.as_ref()),
                    auto_failover: self.failover(d.failover.as_ref()),
                    accounts: self.accounts(d, managed),
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
                    d.on_no_replica_ack
                        .as_ref()
                        .map(|v| ("on_no_replica_ack", v.span())),
                    d.failover.as_ref().map(|v| ("failover", v.span())),
                    d.admin_user.as_ref().map(|v| ("admin_user", v.span())),
                    d.admin_password_env
                        .as_ref()
                        .map(|v| ("admin_password_env", v.span())),
                    d.replication_user
                        .as_ref()
                        .map(|v| ("replication_user", v.span())),
                    d.replication_password_env
                        .as_ref()
                        .map(|v| ("replication_password_env", v.span())),
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

    /// `on_no_replica_ack = "wait" | "fallback"`.
    fn replica_ack(&mut self, value: Option<&Spanned<String>>) -> ReplicaAck {
        match value.map(|v| v.get_ref().as_str()) {
            None | Some("fallback") => ReplicaAck::Fallback,
            Some("wait") => ReplicaAck::Wait,
            Some(other) => {
                let span = value.map_or(0..0, |v| v.span());
                self.mistake(
                    span,
                    format!("unknown `on_no_replica_ack` value `{other}`"),
                    "write \"wait\" (a write waits until a replica has it: none is lost, but \
                     with no replica up nothing is written) or \"fallback\" (after a second \
                     the primary goes on alone)",
                );
                ReplicaAck::Fallback
            }
        }
    }

    /// `admin_user`, `admin_password_env`, `replication_user` and
    /// `replication_password_env`: all four, or none.
    fn accounts(&mut self, d: &RawDatabase, managed: bool) -> Option<Box<FailoverAccounts>> {
        let keys = [
            ("admin_user", &d.admin_user),
            ("admin_password_env", &d.admin_password_env),
            ("replication_user", &d.replication_user),
            ("replication_password_env", &d.replication_password_env),
        ];
        let given: Vec<(&str, &Spanned<String>)> = keys
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)))
            .collect();
        let (_, first) = *given.first()?;
        if managed {
            self.mistake(
                first.span(),
                "the failover accounts are for a site's own servers",
                "remove them: `scaleup up` administers its managed servers over their Unix \
                 sockets",
            );
            return None;
        }
        if given.len() < keys.len() {
            let missing: Vec<&str> = keys
                .iter()
                .filter(|(_, value)| value.is_none())
                .map(|(key, _)| *key)
                .collect();
            self.mistake(
                first.span(),
                format!(
                    "the failover accounts need all four keys; missing: {}",
                    missing.join(", ")
                ),
                "give `admin_user`, `admin_password_env`, `replication_user` and \
                 `replication_password_env` (the passwords come from those variables)",
            );
            return None;
        }
        let value = |v: &Option<Spanned<String>>| {
            v.as_ref().map(|v| v.get_ref().clone()).unwrap_or_default()
        };
        Some(Box::new(FailoverAccounts {
            admin_user: value(&d.admin_user),
            admin_password_env: value(&d.admin_password_env),
            replication_user: value(&d.replication_user),
            replication_password_env: value(&d.replication_password_env),
        }))
    }

    /// `failover = "auto" | "manual"`: whether a replica is promoted by itself.
    fn failover(&mut self, value: Option<&Spanned<String>>) -> bool {
        match value.map(|v| v.get_ref().as_str()) {
            None | Some("auto") => true,
            Some("manual") => false,
            Some(other) => {
                let span = value.map_or(0..0, |v| v.span());
                self.mistake(
                    span,
                    format!("unknown `failover` value `{other}`"),
                    "write \"auto\" (the active load balancer promotes the most advanced \
                     replica when the primary is gone) or \"manual\" (a person runs `scaleup \
                     db switchover`)",
                );
                true
            }
        }
    }

    /// Reads one `mysql://user:password@host:port/database` URL.
    pub(super) fn db_server(&mut self, value: &Spanned<String>, name: String) -> DbServer {
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
    pub(super) fn check_managed(
        &mut self,
        d: &RawDatabase,
        primary: &DbServer,
        replicas: &[DbServer],
    ) {
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
}
