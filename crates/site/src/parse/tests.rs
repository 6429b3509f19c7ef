use super::*;

/// The default site with its `[database]` replaced by `database`.
fn with_database(database: &str) -> String {
    let text = crate::default_site(8080, "/tmp/x", "test-secret");
    let head = &text[..text.find("[database]").unwrap()];
    format!("{head}{database}")
}

fn mistakes(text: &str) -> Vec<Mistake> {
    match parse(text, "test.toml", Path::new("/tmp")) {
        Err(SiteError::Invalid { mistakes, .. }) => mistakes,
        other => panic!("expected mistakes, got {other:?}"),
    }
}

/// The default site with `lines` added to its `[balancer]` table.
fn with_balancer(lines: &str) -> String {
    crate::default_site(8080, "/tmp/x", "test-secret").replacen(
        "[balancer]\n",
        &format!("[balancer]\n{lines}\n"),
        1,
    )
}

#[test]
fn trusted_proxies_are_addresses_and_blocks() {
    let site = parse(
        &with_balancer(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]"#),
        "test.toml",
        Path::new("/tmp"),
    )
    .unwrap();
    let list = &site.balancer.trusted_proxies;
    assert_eq!(list.len(), 3);
    let shown: Vec<String> = list.iter().map(|c| c.to_string()).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);
    let default = parse(
        &crate::default_site(8080, "/tmp/x", "test-secret"),
        "test.toml",
        Path::new("/tmp"),
    )
    .unwrap();
    assert!(
        default.balancer.trusted_proxies.is_empty(),
        "first hop by default"
    );
}

#[test]
fn bad_trusted_proxies_point_at_the_entry() {
    let text = with_balancer(r#"trusted_proxies = ["10.0.0.0/8", "proxy.example", "10.1.2.3/8"]"#);
    let found = mistakes(&text);
    let line = text
        .lines()
        .position(|l| l.contains("trusted_proxies"))
        .unwrap()
        + 1;
    assert_eq!(found.len(), 2, "{found:?}");
    let column = text.lines().nth(line - 1).unwrap().find("\"proxy").unwrap() + 1;
    assert_eq!((found[0].line, found[0].column), (line, column));
    assert!(found[0]
        .message
        .contains("`proxy.example` is not an address"));
    assert_eq!(found[1].line, line);
    assert!(found[1].hint.as_deref().unwrap().contains("\"10.0.0.0/8\""));
}

fn default_text() -> String {
    crate::default_site(8080, "/tmp/x", "test-secret")
}

#[test]
fn the_per_client_cap_defaults_and_must_be_positive() {
    let site = ok(&default_text());
    assert_eq!(site.balancer.max_connections_per_client, 256);
    assert_eq!(site.webs[0].max_connections_per_client, 256);
    let site = ok(&with_balancer("max_connections_per_client = 32"));
    assert_eq!(site.balancer.max_connections_per_client, 32);
    let text = with_balancer("max_connections_per_client = 0");
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column) = position(&text, "max_connections_per_client = 0");
    assert_eq!(
        (found[0].line, found[0].column),
        (line, column + "max_connections_per_client = ".len())
    );
}

fn ok(text: &str) -> Site {
    parse(text, "test.toml", Path::new("/tmp")).unwrap_or_else(|e| panic!("{e}"))
}

/// The line and column of `needle`'s first byte in `text`, 1-based.
fn position(text: &str, needle: &str) -> (usize, usize) {
    crate::error::line_column(text, text.find(needle).unwrap())
}

#[test]
fn a_health_path_must_be_a_request_target() {
    let text = default_text().replace("path = \"/healthz\"", "path = \"/health z\"");
    let found = mistakes(&text);
    assert_eq!(
        found.len(),
        2,
        "both [balancer.health] and [web.health]: {found:?}"
    );
    let (line, column) = position(&text, " z\"");
    assert_eq!(
        (found[0].line, found[0].column),
        (line, column),
        "at the space"
    );
    assert!(
        found[0].message.contains("a space is not allowed"),
        "{}",
        found[0].message
    );
    let rendered = SiteError::Invalid {
        origin: "site.toml".into(),
        mistakes: found,
    }
    .to_string();
    assert!(
        rendered.contains(&format!("site.toml:{line}:{column}:")),
        "{rendered}"
    );
    assert!(
        rendered.contains("help: write a path that starts with `/`"),
        "{rendered}"
    );

    for (bad, why) in [
        ("healthz", "does not start with `/`"),
        ("/a%zz", "two hex digits"),
        ("/a#b", "fragment"),
        ("/a\\u0007", "control character"),
        ("/caf\u{e9}", "`\u{e9}`"),
        ("//evil.example/", "host name"),
        ("", "does not start with `/`"),
    ] {
        let text = default_text().replacen("path = \"/healthz\"", &format!("path = \"{bad}\""), 1);
        let found = mistakes(&text);
        assert!(found[0].message.contains(why), "{bad}: {found:?}");
    }
    for good in [
        "/healthz",
        "/status?full=1",
        "/a%20b",
        "/x-y_z.~!$&'()*+,;=:@",
    ] {
        let text = default_text().replacen("path = \"/healthz\"", &format!("path = \"{good}\""), 1);
        assert_eq!(ok(&text).balancer.health.path, good);
    }
}

#[test]
fn a_cluster_needs_a_secret_or_says_it_has_none() {
    let default = default_text();
    let without = default.replace("secret = \"test-secret\"\n", "");
    let found = mistakes(&without);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("this cluster has no secret"));
    assert!(found[0]
        .hint
        .as_deref()
        .unwrap()
        .contains("insecure_no_secret = true"));

    let empty = default.replace("secret = \"test-secret\"", "secret = \"\"");
    let found = mistakes(&empty);
    assert_eq!(position(&empty, "secret = \"\"").0, found[0].line);
    assert!(found[0].message.contains("secret is empty"));

    let empty_env = default.replace("secret = \"test-secret\"", "secret_env = \"\"");
    assert!(mistakes(&empty_env)[0]
        .message
        .contains("not an environment variable name"));

    let both = default.replace(
        "secret = \"test-secret\"",
        "secret = \"test-secret\"\ninsecure_no_secret = true",
    );
    let found = mistakes(&both);
    assert_eq!(position(&both, "insecure_no_secret").0, found[0].line);

    let said_so = default.replace("secret = \"test-secret\"", "insecure_no_secret = true");
    assert!(ok(&said_so).cluster.unwrap().secret.is_none());
    let env = default.replace("secret = \"test-secret\"", "secret_env = \"LB_SECRET\"");
    assert_eq!(
        ok(&env).cluster.unwrap().secret,
        Some(Secret::Env("LB_SECRET".into()))
    );
}

#[test]
fn a_site_with_https_redirects_plain_http_unless_it_says_not_to() {
    let default = default_text();
    assert!(
        !default.lines().any(|l| l.starts_with("https_redirect")),
        "the default site relies on the default"
    );
    let site = ok(&default);
    assert!(site.has_https());
    assert!(site.balancer.https_redirect, "the default site redirects");

    let off = default.replace("[balancer]\n", "[balancer]\nhttps_redirect = false\n");
    assert!(!ok(&off).balancer.https_redirect);

    // No HTTPS frontend at all: nothing to redirect to, and saying so is a mistake.
    let plain = default
        .replace("tls_address = ", "# tls_address = ")
        .replace("tls_listen = ", "# tls_listen = ");
    let site = ok(&plain);
    assert!(!site.has_https());
    assert!(!site.balancer.https_redirect);
    let want = plain.replace("[balancer]\n", "[balancer]\nhttps_redirect = true\n");
    let found = mistakes(&want);
    assert!(found[0].message.contains("no HTTPS frontend"), "{found:?}");
    assert_eq!(position(&want, "https_redirect").0, found[0].line);
}

#[test]
fn an_unknown_cluster_mode_is_a_mistake_not_a_panic() {
    let text = default_text().replace("mode = \"local\"", "mode = \"carp\"");
    let found = mistakes(&text);
    assert!(found
        .iter()
        .any(|m| m.message.contains("unknown cluster mode `carp`")));
}

#[test]
fn mysql_database_with_replicas_and_defaults() {
    let text = with_database(
        "[database]\nkind = \"mysql\"\n\
         primary = \"mysql://foo:p%40ss@127.0.0.1:3316/foobar\"\n\
         replicas = [\"mysql://foo:p%40ss@127.0.0.1:3317/foobar\", \"mariadb://foo@10.0.0.3/foobar\"]\n",
    );
    let site = parse(&text, "test.toml", Path::new("/tmp")).unwrap();
    let Database::Mysql(m) = site.database else {
        panic!("not mysql")
    };
    assert_eq!(m.primary.name, "primary");
    assert_eq!(m.primary.password.as_deref(), Some("p@ss"));
    assert_eq!(m.primary.address(), "127.0.0.1:3316");
    assert_eq!(m.replicas[1].name, "replica2");
    assert_eq!(m.replicas[1].port, 3306, "the default port");
    assert_eq!(m.replicas[1].password, None);
    assert_eq!(m.max_replica_lag, Duration::from_secs(1));
    assert_eq!(m.read_your_writes_timeout, Duration::from_millis(200));
    assert!(!m.managed);
    assert_eq!(m.on_no_replica_ack, ReplicaAck::Fallback, "the default");
    assert!(m.auto_failover, "the default");
    assert!(!format!("{m:?}").contains("p@ss"), "Debug hides passwords");
}

#[test]
fn failover_accounts_come_all_four_for_own_servers_only() {
    let mysql = |extra: &str| {
        with_database(&format!(
            "[database]\nkind = \"mysql\"\n\
             primary = \"mysql://foo:pw@10.0.0.5:3306/foobar\"\n{extra}"
        ))
    };
    let all = "admin_user = \"scaleup_admin\"\nadmin_password_env = \"ADMIN_PW\"\n\
               replication_user = \"repl\"\nreplication_password_env = \"REPL_PW\"\n";
    let site = parse(&mysql(all), "test.toml", Path::new("/tmp")).unwrap();
    let Database::Mysql(m) = site.database else {
        panic!("not mysql")
    };
    let accounts = m.accounts.expect("the accounts");
    assert_eq!(
        (
            accounts.admin_user.as_str(),
            accounts.replication_password_env.as_str()
        ),
        ("scaleup_admin", "REPL_PW")
    );
    let text = mysql("admin_user = \"scaleup_admin\"\n");
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .contains("missing: admin_password_env, replication_user"),
        "{found:?}"
    );
    assert_eq!(
        found[0].line,
        text.lines()
            .position(|l| l.starts_with("admin_user"))
            .unwrap()
            + 1
    );
}

#[test]
fn failover_is_auto_or_manual_and_mysql_only() {
    let mysql = |value: &str| {
        with_database(&format!(
            "[database]\nkind = \"mysql\"\n\
             primary = \"mysql://foo:pw@127.0.0.1:3316/foobar\"\n\
             failover = \"{value}\"\n"
        ))
    };
    for (value, want) in [("auto", true), ("manual", false)] {
        let site = parse(&mysql(value), "test.toml", Path::new("/tmp")).unwrap();
        let Database::Mysql(m) = site.database else {
            panic!("not mysql")
        };
        assert_eq!(m.auto_failover, want, "{value}");
    }
    let text = mysql("sometimes");
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let line = text.lines().position(|l| l.contains("failover")).unwrap() + 1;
    assert_eq!(
        (found[0].line, found[0].column > 1),
        (line, true),
        "{found:?}"
    );
    assert!(found[0]
        .message
        .contains("unknown `failover` value `sometimes`"));
    let found = mistakes(&with_database(
        "[database]\nkind = \"sqlite\"\nfailover = \"manual\"\n",
    ));
    assert!(
        found[0]
            .message
            .contains("`failover` is for `kind = \"mysql\"`"),
        "{found:?}"
    );
}

#[test]
fn on_no_replica_ack_is_wait_or_fallback_and_mysql_only() {
    let mysql = |value: &str| {
        with_database(&format!(
            "[database]\nkind = \"mysql\"\n\
             primary = \"mysql://foo:pw@127.0.0.1:3316/foobar\"\n\
             on_no_replica_ack = \"{value}\"\n"
        ))
    };
    for (value, want) in [
        ("wait", ReplicaAck::Wait),
        ("fallback", ReplicaAck::Fallback),
    ] {
        let site = parse(&mysql(value), "test.toml", Path::new("/tmp")).unwrap();
        let Database::Mysql(m) = site.database else {
            panic!("not mysql")
        };
        assert_eq!(m.on_no_replica_ack, want, "{value}");
    }
    let text = mysql("sometimes");
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let line = text
        .lines()
        .position(|l| l.contains("on_no_replica_ack"))
        .unwrap()
        + 1;
    assert_eq!(found[0].line, line);
    assert!(found[0].column > 1, "{found:?}");
    assert!(found[0]
        .message
        .contains("unknown `on_no_replica_ack` value `sometimes`"));
    let hint = found[0].hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("\"wait\"") && hint.contains("\"fallback\""),
        "{hint}"
    );

    let found = mistakes(&with_database(
        "[database]\nkind = \"sqlite\"\non_no_replica_ack = \"wait\"\n",
    ));
    assert!(
        found[0]
            .message
            .contains("`on_no_replica_ack` is for `kind = \"mysql\"`"),
        "{found:?}"
    );
}

#[test]
fn mysql_mistakes_point_at_the_value() {
    let text = with_database(
        "[database]\nkind = \"mysql\"\n\
         primary = \"postgres://foo@127.0.0.1/foobar\"\n\
         replicas = [\"mysql://foo@127.0.0.1:3317/\"]\n\
         max_replica_lag = \"soon\"\n",
    );
    let found = mistakes(&text);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].line, line_of("postgres://"));
    assert!(found[0].message.contains("scheme is `postgres`"));
    assert_eq!(found[1].line, line_of("replicas"));
    assert!(found[1].message.contains("names no database"));
    assert_eq!(found[2].line, line_of("max_replica_lag"));
}

#[test]
fn mysql_needs_a_primary_and_sqlite_keys_stay_apart() {
    let found = mistakes(&with_database("[database]\nkind = \"mysql\"\n"));
    assert!(found[0].message.contains("needs a `primary`"), "{found:?}");
    let found = mistakes(&with_database(
        "[database]\nkind = \"sqlite\"\nreplicas = [\"mysql://a@b/c\"]\n",
    ));
    assert!(found[0]
        .message
        .contains("`replicas` is for `kind = \"mysql\"`"));
    let found = mistakes(&with_database("[database]\nkind = \"postgres\"\n"));
    assert!(found[0].hint.as_deref().unwrap().contains("mysql"));
}

#[test]
fn managed_servers_are_local_with_their_own_ports() {
    let found = mistakes(&with_database(
        "[database]\nkind = \"mysql\"\nmanaged = true\n\
         primary = \"mysql://foo:pw@10.1.2.3:3316/foobar\"\n\
         replicas = [\"mysql://foo:pw@127.0.0.1:3316/foobar\", \"mysql://bar:pw@127.0.0.1:3318/foobar\"]\n",
    ));
    let messages: Vec<&str> = found.iter().map(|m| m.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("cannot start a server on 10.1.2.3")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("port 3316 is already used by primary")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("primary's user, password and database")),
        "{messages:?}"
    );
}

#[test]
fn the_tunnel_timeout_defaults_to_an_hour_and_must_be_a_duration() {
    let site = ok(&default_text());
    assert_eq!(site.balancer.timeouts.tunnel, Duration::from_secs(3600));
    assert_eq!(site.webs[0].timeouts.tunnel, Duration::from_secs(3600));
    let text = default_text().replacen(
        "[balancer.timeouts]\n",
        "[balancer.timeouts]\ntunnel = \"90s\"\n",
        1,
    );
    assert_eq!(ok(&text).balancer.timeouts.tunnel, Duration::from_secs(90));
    let text = default_text().replacen(
        "[balancer.timeouts]\n",
        "[balancer.timeouts]\ntunnel = \"forever\"\n",
        1,
    );
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column) = position(&text, "tunnel = \"forever\"");
    assert_eq!(
        (found[0].line, found[0].column),
        (line, column + "tunnel = ".len())
    );
    assert!(found[0].message.contains("`forever` is not a duration"));
}

#[test]
fn weights_default_to_one_and_stay_within_1_to_256() {
    let site = ok(&default_text());
    assert_eq!(site.webs[0].weight, 1);
    assert_eq!(site.apps[0].weight, 1);
    let text = default_text()
        .replacen("weight = 1\n", "weight = 3\n", 1)
        .replacen("name = \"app1\"\n", "name = \"app1\"\nweight = 256\n", 1);
    let site = ok(&text);
    assert_eq!((site.webs[0].weight, site.apps[0].weight), (3, 256));

    let text = default_text().replacen("weight = 1\n", "weight = 0\n", 1);
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column) = position(&text, "weight = 0");
    assert_eq!(
        (found[0].line, found[0].column),
        (line, column + "weight = ".len())
    );
    assert!(found[0].message.contains("weight of 0"));
    assert!(found[0].hint.as_deref().unwrap().contains("scaleup drain"));

    for bad in ["257", "-2"] {
        let text = default_text().replacen("weight = 1\n", &format!("weight = {bad}\n"), 1);
        let found = mistakes(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("is not a weight"), "{found:?}");
        assert!(found[0].hint.as_deref().unwrap().contains("1 to 256"));
    }
}

#[test]
fn slowstart_is_a_duration_and_zero_turns_it_off() {
    let site = ok(&default_text());
    assert_eq!(site.balancer.slowstart, Duration::from_secs(10));
    assert_eq!(site.webs[0].slowstart, DEFAULT_SLOWSTART);
    let text = default_text().replacen("slowstart = \"10s\"", "slowstart = \"0s\"", 1);
    assert_eq!(ok(&text).balancer.slowstart, Duration::ZERO);
    let text = default_text().replacen("weight = 1\n", "weight = 1\nslowstart = \"0\"\n", 1);
    assert_eq!(ok(&text).webs[0].slowstart, Duration::ZERO);
    let text = default_text().replacen("slowstart = \"10s\"", "slowstart = \"soon\"", 1);
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, _) = position(&text, "slowstart = \"soon\"");
    assert_eq!(found[0].line, line);
    assert!(found[0]
        .message
        .contains("`soon` is not a slow-start duration"));
}

#[test]
fn admin_token_env_names_a_variable() {
    let site = ok(&default_text());
    assert_eq!(site.admin_token_env.as_deref(), Some("SCALEUP_ADMIN_TOKEN"));
    let without = default_text().replacen("admin_token_env = \"SCALEUP_ADMIN_TOKEN\"\n", "", 1);
    let site = ok(&without);
    assert_eq!(site.admin_token_env, None);
    assert_eq!(
        site.admin_token(),
        Ok(None),
        "no variable: no token, no writes"
    );

    let text = default_text().replacen("\"SCALEUP_ADMIN_TOKEN\"", "\"1 token\"", 1);
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column) = position(&text, "\"1 token\"");
    assert_eq!((found[0].line, found[0].column), (line, column));
    assert!(found[0].message.contains("admin_token_env"));

    // A variable no test or shell sets: the error says what to export.
    let text = default_text().replacen(
        "\"SCALEUP_ADMIN_TOKEN\"",
        "\"SCALEUP_TEST_TOKEN_NEVER_SET_4F2A\"",
        1,
    );
    let err = ok(&text).admin_token().unwrap_err();
    assert!(
        err.contains("export SCALEUP_TEST_TOKEN_NEVER_SET_4F2A="),
        "{err}"
    );
}

#[test]
fn log_format_is_combined_or_json() {
    assert_eq!(ok(&default_text()).log_format, LogFormat::Combined);
    let json = default_text().replacen("log_format = \"combined\"", "log_format = \"json\"", 1);
    assert_eq!(ok(&json).log_format, LogFormat::Json);
    let text = default_text().replacen("log_format = \"combined\"", "log_format = \"xml\"", 1);
    let found = mistakes(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, column) = position(&text, "\"xml\"");
    assert_eq!((found[0].line, found[0].column), (line, column));
    assert!(found[0].message.contains("unknown log_format `xml`"));
    assert!(found[0].hint.as_deref().unwrap().contains("\"json\""));
}

#[test]
fn every_node_has_an_access_log_under_the_state_dir_by_default() {
    let site = ok(&default_text());
    let state = Path::new("/tmp/x");
    assert_eq!(
        site.lbs[0].access_log.as_deref(),
        Some(state.join("lb1-access.log").as_path())
    );
    assert_eq!(
        site.webs[0].access_log.as_deref(),
        Some(state.join("web1-access.log").as_path())
    );
    assert_eq!(
        site.apps[0].access_log.as_deref(),
        Some(state.join("app1-access.log").as_path())
    );
    let text = default_text()
        .replacen(
            "name = \"lb1\"\n",
            "name = \"lb1\"\naccess_log = \"-\"\n",
            1,
        )
        .replacen(
            "name = \"app1\"\n",
            "name = \"app1\"\naccess_log = \"logs/app.log\"\n",
            1,
        );
    let site = ok(&text);
    assert_eq!(site.lbs[0].access_log, None);
    assert_eq!(
        site.apps[0].access_log.as_deref(),
        Some(state.join("logs/app.log").as_path())
    );
}
