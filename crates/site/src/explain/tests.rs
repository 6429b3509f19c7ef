//! Tests of the explanation, on parsed site files.

use super::*;
use std::path::Path;

fn site(text: &str) -> Site {
    crate::parse(text, "test.toml", Path::new("/tmp")).unwrap_or_else(|e| panic!("{e}"))
}

fn default() -> Site {
    site(&crate::default_site(8080, "/tmp/x", "test-secret"))
}

/// lb1, one web server, one app server, and `extra` appended.
fn small(extra: &str) -> String {
    format!(
        r#"[site]
name = "www.foobar.com"
state_dir = "/tmp/s"

[[lb]]
name = "lb1"
listen = "127.0.0.1:7000"
admin = "127.0.0.1:7100"

[[app]]
name = "app1"
listen = "127.0.0.1:7003"
admin = "127.0.0.1:7103"
{extra}"#
    )
}

const WEB1: &str = r#"
[[web]]
name = "web1"
listen = "127.0.0.1:7002"
admin = "127.0.0.1:7102"
"#;

const WEB2: &str = r#"
[[web]]
name = "web2"
listen = "127.0.0.1:7012"
admin = "127.0.0.1:7112"
"#;

fn has(risks: &[Risk], severity: Severity, words: &[&str]) -> bool {
    risks
        .iter()
        .any(|r| r.severity == severity && words.iter().all(|w| r.what.contains(w)))
}

#[test]
fn default_site_lists_the_single_points_of_failure() {
    let e = explain(&default());
    let spof = "single point of failure";
    assert!(
        has(&e.risks, Severity::High, &["web server web1", spof]),
        "{:#?}",
        e.risks
    );
    assert!(has(
        &e.risks,
        Severity::High,
        &["application server app1", spof]
    ));
    assert!(has(&e.risks, Severity::High, &["database", spof, "SQLite"]));
    assert!(e
        .risks
        .iter()
        .any(|r| r.fix.contains("MySQL/MariaDB") && r.fix.contains("[database]")));
    // Two load balancers in a cluster: neither a SPOF nor "not a cluster".
    assert!(!has(&e.risks, Severity::High, &["load balancer lb1"]));
    assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
    assert!(!e.risks.iter().any(|r| r.what.contains("not authenticated")));
    // HTTPS by default: plain HTTP redirects, HSTS is on, and every hop is loopback.
    assert!(
        !e.risks.iter().any(|r| r.what.contains("Plain HTTP")),
        "{:#?}",
        e.risks
    );
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.contains("Strict-Transport-Security")));
    assert!(!e.risks.iter().any(|r| r.what.contains("between tiers")));
    assert!(has(&e.risks, Severity::Medium, &["self-signed"]));
    // Local mode: one machine carries both load balancers.
    let local = e
        .risks
        .iter()
        .find(|r| r.what.contains("Both load balancers run on one machine"))
        .expect("local-mode risk");
    assert_eq!(local.severity, Severity::Medium);
    assert!(local.fix.contains("linux"));
    // Everything is on loopback.
    assert!(!e.risks.iter().any(|r| r.what.contains("admin listener")));
    // The only low risk: the generated secret is written in the file.
    let low: Vec<&Risk> = e
        .risks
        .iter()
        .filter(|r| r.severity == Severity::Low)
        .collect();
    assert_eq!(low.len(), 1, "{low:#?}");
    assert!(low[0].what.contains("secret is written in the site file"));
    assert!(low[0].fix.contains("secret_env"));
}

#[test]
fn risks_are_ordered_by_severity() {
    let e = explain(&site(
        &small(&format!("{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\"]\n"))
            .replace("127.0.0.1:7100", "0.0.0.0:7100"),
    ));
    let severities: Vec<Severity> = e.risks.iter().map(|r| r.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort();
    assert_eq!(severities, sorted);
    assert!(severities.contains(&Severity::High));
    assert!(severities.contains(&Severity::Medium));
    assert!(severities.contains(&Severity::Low));
}

#[test]
fn an_admin_listener_beyond_loopback_is_a_risk_naming_the_node() {
    let text = small(WEB1).replace("127.0.0.1:7102", "0.0.0.0:9000");
    let e = explain(&site(&text));
    let admin: Vec<&Risk> = e
        .risks
        .iter()
        .filter(|r| r.what.contains("admin listener"))
        .collect();
    assert_eq!(admin.len(), 1, "{admin:#?}");
    assert!(admin[0].what.contains("web1"));
    assert!(admin[0].what.contains("0.0.0.0:9000"));
    assert!(admin[0].what.contains("/metrics"));
    assert!(admin[0].fix.contains("127.0.0.1"));
    assert_eq!(admin[0].severity, Severity::Medium);

    let text = small(WEB1).replace("127.0.0.1:7103", "[::]:9001");
    let e = explain(&site(&text));
    assert!(e
        .risks
        .iter()
        .any(|r| r.what.contains("admin listener of app1")));
    let text = small(WEB1).replace("127.0.0.1:7100", "[::1]:9002");
    let e = explain(&site(&text));
    assert!(!e.risks.iter().any(|r| r.what.contains("admin listener")));
}

#[test]
fn two_web_servers_remove_the_web_single_point_of_failure() {
    let text = small(&format!(
        "{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\", \"web2\"]\n"
    ));
    let e = explain(&site(&text));
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.contains("web server") && r.what.contains("single point of failure")));
    // Without a [balancer] section every web server is in the pool.
    let e = explain(&site(&small(&format!("{WEB1}{WEB2}"))));
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.contains("web server") && r.what.contains("single point of failure")));
}

#[test]
fn a_web_server_outside_the_pool_receives_no_traffic() {
    let text = small(&format!("{WEB1}{WEB2}\n[balancer]\nservers = [\"web1\"]\n"));
    let e = explain(&site(&text));
    assert!(has(&e.risks, Severity::Low, &["web2 receives no traffic"]));
    // web1 alone carries the traffic: still a single point of failure, and the
    // fix names the idle web server.
    let spof = e
        .risks
        .iter()
        .find(|r| {
            r.what
                .contains("web server web1 is a single point of failure")
        })
        .expect("web SPOF");
    assert!(spof.fix.contains("web2"));
    assert!(e.mermaid.contains("class web_web2 idle"));
    assert!(e.picture.contains("not in pool"));
}

#[test]
fn one_load_balancer_is_a_single_point_of_failure() {
    let e = explain(&site(&small(WEB1)));
    assert!(has(
        &e.risks,
        Severity::High,
        &["load balancer lb1", "single point of failure"]
    ));
    assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
}

#[test]
fn two_app_servers_remove_the_app_single_point_of_failure() {
    let text = small(&format!(
        "{WEB1}\n[[app]]\nname = \"app2\"\nlisten = \"127.0.0.1:7013\"\nadmin = \"127.0.0.1:7113\"\n"
    ));
    let e = explain(&site(&text));
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.starts_with("The application server")));
    // The database is still one SQLite file.
    assert!(has(
        &e.risks,
        Severity::High,
        &["database", "single point of failure"]
    ));
}

#[test]
fn a_replicated_database_shows_its_replicas_and_the_primary_risk() {
    let text = crate::default_site(8080, "/tmp/x", "test-secret");
    let head = &text[..text.find("[database]").unwrap()];
    let e = explain(&site(&format!(
        "{head}[database]\nkind = \"mysql\"\nprimary = \"mysql://f@127.0.0.1:3316/f\"\n\
         replicas = [\"mysql://f@127.0.0.1:3317/f\"]\n"
    )));
    assert!(
        e.picture.contains("replica1 127.0.0.1:3317"),
        "{}",
        e.picture
    );
    assert!(e.mermaid.contains("GTID replication"));
    assert!(has(
        &e.risks,
        Severity::High,
        &[
            "primary 127.0.0.1:3316",
            "single point of failure for writes"
        ]
    ));
    assert!(!has(&e.risks, Severity::High, &["SQLite"]));
}

#[test]
fn mermaid_shows_every_node_and_the_path() {
    let s = default();
    let e = explain(&s);
    assert!(e.mermaid.starts_with("graph TD\n"));
    for (_, node) in s.nodes() {
        assert!(e.mermaid.contains(&node.name), "{} missing", node.name);
        assert!(e.mermaid.contains(&node.listen.to_string()));
    }
    for edge in [
        "user -->",
        "dns -->|\"A 127.0.0.1\"| vip",
        "vip -->|\"active\"| lb_lb1",
        "vip -.->|\"takes over if lb1 fails\"| lb_lb2",
        "lb_lb1 <-->|\"heartbeat every 100ms, authenticated\"| lb_lb2",
        "lb_lb1 -->|\"roundrobin\"| web_web1",
        "lb_lb2 -->|\"roundrobin\"| web_web1",
        "web_web1 -->|\"HTTP\"| app_app1",
        "app_app1 -->|\"SQL\"| db",
    ] {
        assert!(e.mermaid.contains(edge), "{edge} missing in\n{}", e.mermaid);
    }
    assert!(e.mermaid.contains("DNS www.foobar.com"));
    assert!(e.mermaid.contains("SQLite"));
    // DNS points at the floating address alone, not at each load balancer.
    assert!(e
        .mermaid
        .contains("vip{{\"floating address<br/>127.0.0.1:8080"));
    assert!(!e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_"));
    assert!(e.mermaid.contains("priority 150, starts active"));
    assert!(e.mermaid.contains("priority 100, passive"));
}

#[test]
fn mermaid_ids_are_sanitized() {
    let text = small(WEB1)
        .replace("\"lb1\"", "\"lb-east\"")
        .replace("\"app1\"", "\"end\"");
    let e = explain(&site(&text));
    assert!(e.mermaid.contains("lb_lb_east[\""));
    assert!(e.mermaid.contains("app_end[\""));
    // Every edge's endpoints are plain identifiers.
    for line in e.mermaid.lines().filter(|l| l.contains("-->")) {
        let from = line.trim().split(' ').next().unwrap();
        let to = line.trim().rsplit(' ').next().unwrap();
        for id in [from, to] {
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad id {id:?} in {line:?}"
            );
        }
    }
    assert_eq!(mermaid_id("a.b-c"), "a_b_c");
    assert_eq!(
        label(&["say \"hi\" #1 <b>"]),
        "say #quot;hi#quot; #35;1 #lt;b#gt;"
    );
}

#[test]
fn picture_shows_every_node_name_and_address() {
    let s = default();
    let e = explain(&s);
    for (_, node) in s.nodes() {
        assert!(e.picture.contains(&node.name), "{} missing", node.name);
        assert!(e.picture.contains(&node.listen.to_string()));
        assert!(e.picture.contains(&node.admin.to_string()));
    }
    assert!(e.picture.contains("/tmp/x/foobar.db"));
    for line in e.picture.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
}

#[test]
fn picture_shows_the_cluster_with_its_heartbeat_link() {
    let e = explain(&default());
    let p = &e.picture;
    assert!(p.contains("A 127.0.0.1 -> floating address"), "{p}");
    assert!(p.contains("floating address (local mode)"));
    assert!(p.contains("127.0.0.1:8080"));
    assert!(p.contains("load-balancer cluster"));
    // lb1 and lb2 side by side, the heartbeat link between them.
    let link = p.lines().find(|l| l.contains('◄')).expect("heartbeat link");
    let (left, right) = link.split_once('◄').unwrap();
    assert!(left.contains("127.0.0.1:8091"), "{link}");
    assert!(right.contains("127.0.0.1:8092"), "{link}");
    assert!(p.contains("every 100ms"));
    assert!(p.contains(" authenticated "));
    assert!(p.contains("starts active"));
    let names = p.lines().find(|l| l.contains("│ lb1")).expect("lb1 box");
    assert!(names.find("lb1") < names.find("lb2"), "{names}");
    for line in p.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
}

#[test]
fn picture_stacks_a_cluster_too_wide_for_one_row() {
    let text = cluster_site("mode = \"linux\"\ninterface = \"eth0\"\naddress = \"2001:db8::100/64:80\"\nsecret_env = \"S\"\n")
        .replace("10.0.0.1:80", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:80")
        .replace("10.0.0.2:80", "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:2]:80");
    let e = explain(&site(&text));
    for line in e.picture.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
    assert!(
        e.picture.contains("heartbeat, every 100ms, authenticated"),
        "{}",
        e.picture
    );
    assert!(e.picture.contains("eeee:1]:80"));
    assert!(e.picture.contains("eeee:2]:80"));
    assert!(e.mermaid.contains("dns -->|\"AAAA 2001:db8::100\"| vip"));
}

#[test]
fn picture_fits_many_nodes_per_tier_in_80_columns() {
    let mut extra = String::new();
    for i in 1..=7 {
        let _ = write!(
            extra,
            "\n[[web]]\nname = \"web{i}\"\nlisten = \"10.0.0.{i}:8080\"\nadmin = \"127.0.0.1:{}\"\n",
            9000 + i
        );
    }
    let s = site(&small(&extra));
    let e = explain(&s);
    for (_, node) in s.nodes() {
        assert!(e.picture.contains(&node.name), "{} missing", node.name);
        assert!(e.picture.contains(&node.listen.to_string()));
    }
    for line in e.picture.lines() {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
    // Side by side: fewer box rows than web servers.
    let tops = e
        .picture
        .lines()
        .filter(|l| l.trim_start().starts_with('┌'))
        .count();
    assert!(tops < 7 + 4, "{}", e.picture);
}

#[test]
fn elements_cover_dns_every_node_and_the_database() {
    let s = default();
    let e = explain(&s);
    let names: Vec<&str> = e.elements.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "www.foobar.com",
            "floating address",
            "lb1",
            "lb2",
            "web1",
            "app1",
            "database"
        ]
    );
    let lb1 = &e.elements[2];
    assert_eq!(lb1.kind, "load balancer");
    assert_eq!(
        lb1.address,
        "127.0.0.1:8081, admin 127.0.0.1:8091, heartbeat 127.0.0.1:8101"
    );
    assert!(lb1.why.contains("health"));
    assert!(lb1.why.contains("distributes"));
    assert!(lb1.why.contains("active"));
    assert!(e.elements[3].why.contains("passive"));
    assert!(e.elements[4].why.contains("static files"));
    assert!(e.elements[4].why.contains("reverse proxy"));
    assert!(e.elements[4].why.contains("security layer"));
    assert!(e.elements[5].why.contains("business logic"));
    assert!(e.elements[5].why.contains("no state of its own"));
    assert!(e.elements[6].why.contains("back"));
    // DNS points at the one floating address, not at each load balancer.
    let dns = &e.elements[0];
    assert_eq!(dns.kind, "DNS entry");
    assert_eq!(
        dns.address,
        "A 127.0.0.1 (the floating address 127.0.0.1:8080)"
    );
    assert!(dns.why.contains("floating address"));
    let vip = &e.elements[1];
    assert_eq!(vip.kind, "load-balancer cluster");
    assert!(vip.address.starts_with("127.0.0.1:8080, local mode"));
    for words in [
        "single point of failure",
        "about 300ms",
        "heartbeat link",
        "at once",
        "Preempt is off",
    ] {
        assert!(vip.why.contains(words), "{words} missing in {}", vip.why);
    }
    for el in &e.elements {
        assert!(!el.why.contains("  "), "double space in {:?}", el.why);
    }
}

#[test]
fn render_text_has_picture_mermaid_elements_and_risks() {
    let e = explain(&default());
    let text = e.render_text();
    assert!(text.contains("```mermaid\ngraph TD\n"));
    assert!(text.contains(&e.picture));
    assert!(text.contains("Why each element is there"));
    assert!(text.contains("Risks, most serious first"));
    assert!(text.contains("[HIGH]"));
    assert!(text.contains("Fix: "));
    // Everything outside the Mermaid block (which is for machines) fits a terminal.
    let (before, after) = text.split_once("```mermaid").unwrap();
    let after = after.split_once("```").unwrap().1;
    for line in before.lines().chain(after.lines()) {
        assert!(line.chars().count() <= WIDTH, "too wide: {line}");
    }
    println!("{text}");
}

/// Two load balancers with heartbeats (lb2 has the higher priority), one web
/// server, one app server, and a [cluster] section made of `cluster`.
fn cluster_site(cluster: &str) -> String {
    format!(
        r#"[site]
name = "www.foobar.com"
state_dir = "/tmp/s"

[cluster]
{cluster}
[[lb]]
name = "lb1"
listen = "10.0.0.1:80"
admin = "127.0.0.1:7100"
heartbeat = "10.0.0.1:7200"
priority = 100

[[lb]]
name = "lb2"
listen = "10.0.0.2:80"
admin = "127.0.0.1:7101"
heartbeat = "10.0.0.2:7200"
priority = 200
{WEB1}
[[app]]
name = "app1"
listen = "127.0.0.1:7003"
admin = "127.0.0.1:7103"
"#
    )
}

#[test]
fn a_cluster_without_a_secret_has_unauthenticated_heartbeats() {
    let e = explain(&site(&cluster_site(
        "mode = \"local\"\naddress = \"127.0.0.1:8000\"\ninsecure_no_secret = true\n",
    )));
    let risk = e
        .risks
        .iter()
        .find(|r| r.what.contains("heartbeats are not authenticated"))
        .expect("unauthenticated risk");
    assert!(risk.what.contains("insecure_no_secret = true"));
    assert_eq!(risk.severity, Severity::High);
    assert!(risk.what.contains("forge a heartbeat"));
    assert!(risk.what.contains("take or release the floating address"));
    assert!(risk.fix.contains("secret_env = \"SCALEUP_CLUSTER_SECRET\""));
    assert!(risk.fix.contains("[cluster]"));
    assert!(!e.risks.iter().any(|r| r.what.contains("not a cluster")));
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.contains("written in the site file")));
    assert!(e
        .mermaid
        .contains("heartbeat every 100ms, NOT authenticated"));
    assert!(e.picture.contains("NOT authenticated"));
    assert!(e.elements[1].why.contains("not authenticated"));
}

#[test]
fn a_linux_cluster_with_secret_env_explains_gratuitous_arp_and_preempt() {
    let e = explain(&site(&cluster_site(
        "mode = \"linux\"\ninterface = \"eth0\"\naddress = \"10.0.0.100/24:80\"\n\
         secret_env = \"SCALEUP_CLUSTER_SECRET\"\ninterval = \"200ms\"\ndead_after = 5\n\
         preempt = true\n",
    )));
    // Neither secret risk nor the one-machine risk.
    assert!(!e.risks.iter().any(|r| r.what.contains("secret")
        || r.what.contains("heartbeats")
        || r.what.contains("Both load balancers")
        || r.what.contains("not a cluster")
        || r.what.contains("load balancer lb")));
    let dns = &e.elements[0];
    assert_eq!(
        dns.address,
        "A 10.0.0.100 (the floating address 10.0.0.100:80)"
    );
    let vip = &e.elements[1];
    for words in [
        "gratuitous ARP",
        "eth0",
        "about 1s",
        "5 missed",
        "Preempt is on",
    ] {
        assert!(vip.why.contains(words), "{words} missing in {}", vip.why);
    }
    // lb2 has the higher priority: it starts active.
    assert!(vip.why.contains("lb2 (priority 200) starts active"));
    assert!(e.mermaid.contains("vip -->|\"active\"| lb_lb2"));
    assert!(e
        .mermaid
        .contains("vip -.->|\"takes over if lb2 fails\"| lb_lb1"));
    assert!(e
        .mermaid
        .contains("lb_lb2 <-->|\"heartbeat every 200ms, authenticated\"| lb_lb1"));
    assert!(e.mermaid.contains("linux mode"));
    assert!(e.picture.contains("10.0.0.100/24 on eth0"));
    assert!(e.picture.contains("preempt on"));
    let link = e.picture.lines().find(|l| l.contains('◄')).expect("link");
    assert!(
        link.split_once('◄').unwrap().0.contains("127.0.0.1:7101"),
        "{}",
        e.picture
    );
}

#[test]
fn a_hook_cluster_names_its_commands() {
    let e = explain(&site(&cluster_site(
        "mode = \"hook\"\non_active = \"take-vip\"\non_passive = \"drop-vip\"\n\
         secret_env = \"S\"\n",
    )));
    assert!(e.elements[1].why.contains("`take-vip` on becoming active"));
    assert!(e.elements[1].why.contains("`drop-vip` on becoming passive"));
    assert!(e.elements[0].address.contains("the address the hooks move"));
    assert!(e.mermaid.contains("hook mode"));
    assert!(!e
        .risks
        .iter()
        .any(|r| r.what.contains("Both load balancers")));
}

#[test]
fn equal_priorities_are_settled_by_name() {
    let text = cluster_site("address = \"127.0.0.1:8000\"\nsecret_env = \"S\"\n")
        .replace("priority = 200", "priority = 100");
    let e = explain(&site(&text));
    assert!(e.mermaid.contains("vip -->|\"active\"| lb_lb1"));
    assert!(e.elements[2].why.contains("name that sorts first (lb1)"));
}

#[test]
fn two_load_balancers_without_a_cluster_are_not_a_cluster() {
    let text = small(&format!(
        "{WEB1}\n[[lb]]\nname = \"lb2\"\nlisten = \"127.0.0.1:7001\"\nadmin = \"127.0.0.1:7101\"\n"
    ));
    let e = explain(&site(&text));
    let risk = e
        .risks
        .iter()
        .find(|r| r.what.contains("not a cluster"))
        .expect("not-a-cluster risk");
    assert_eq!(risk.severity, Severity::Medium);
    assert!(risk.what.contains("heartbeat secret"));
    for words in [
        "[cluster]",
        "mode",
        "address",
        "secret_env",
        "heartbeat",
        "priority",
    ] {
        assert!(risk.fix.contains(words), "{words} missing in {}", risk.fix);
    }
    assert!(!risk.fix.contains("planned"));
    assert!(!has(&e.risks, Severity::High, &["load balancer lb"]));
    // DNS lists both; no floating address anywhere.
    assert!(e.elements[0].address.contains("A 127.0.0.1 (lb1)"));
    assert!(e.elements[0].address.contains("A 127.0.0.1 (lb2)"));
    assert!(e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_lb1"));
    assert!(e.mermaid.contains("dns -->|\"A 127.0.0.1\"| lb_lb2"));
    assert!(!e.mermaid.contains("vip"));
    assert!(!e.picture.contains('◄'));
    for el in &e.elements {
        assert!(!el.why.contains("planned"), "{}", el.why);
    }
}

#[test]
fn fit_and_wrap_keep_to_the_width() {
    assert_eq!(fit("abc def", 3), ["abc", "def"]);
    assert_eq!(fit("abcdefg", 3), ["abc", "def", "g"]);
    assert_eq!(fit("", 3), [""]);
    assert_eq!(wrap("a b", "- ", "  "), "- a b\n");
    let long = "word ".repeat(40);
    for line in wrap(&long, "  ", "  ").lines() {
        assert!(line.len() <= WIDTH);
    }
}

#[test]
fn turning_https_off_piece_by_piece_is_listed_as_risks() {
    let default = crate::default_site(8080, "/tmp/x", "test-secret");
    let text = default
        .replace("[balancer]\n", "[balancer]\nhttps_redirect = false\n")
        .replace("hsts = \"max-age=63072000\"", "hsts = \"\"");
    let e = explain(&site(&text));
    let redirect = e
        .risks
        .iter()
        .find(|r| r.what.contains("Plain HTTP is still served"))
        .expect("https_redirect = false is a risk");
    assert_eq!(redirect.severity, Severity::Medium);
    assert!(redirect.what.contains("`https_redirect = false`"));
    assert!(redirect.fix.contains("Remove `https_redirect = false`"));
    assert!(has(
        &e.risks,
        Severity::Medium,
        &["no Strict-Transport-Security"]
    ));
}

#[test]
fn plain_http_between_machines_is_a_risk_only_off_loopback() {
    let default = crate::default_site(8080, "/tmp/x", "test-secret");
    let e = explain(&site(&default));
    assert!(!e.risks.iter().any(|r| r.what.contains("between tiers")));
    // The application server on another machine, TLS ended at the load balancers.
    let text = default
        .replace("listen = \"127.0.0.1:8084\"", "listen = \"10.0.0.4:8084\"")
        .replace("tls_mode = \"tcp\"", "tls_mode = \"http\"");
    let e = explain(&site(&text));
    let risk = e
        .risks
        .iter()
        .find(|r| r.what.contains("between tiers"))
        .expect("plain hop");
    assert!(risk.what.contains("web1 to app1"), "{}", risk.what);
    assert!(
        !risk.what.contains("lb1 to web1"),
        "loopback to loopback stays on one machine"
    );
    assert!(risk.fix.contains("tls_mode = \"tcp\""));
}

#[test]
fn trusting_every_proxy_is_a_risk() {
    let default = crate::default_site(8080, "/tmp/x", "test-secret");
    let careful = default.replace(
        "[balancer]\n",
        "[balancer]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    assert!(!explain(&site(&careful))
        .risks
        .iter()
        .any(|r| r.what.contains("trusted_proxies")));
    let everyone = default.replace(
        "[balancer]\n",
        "[balancer]\ntrusted_proxies = [\"0.0.0.0/0\"]\n",
    );
    assert!(has(
        &explain(&site(&everyone)).risks,
        Severity::High,
        &["trusted_proxies holds 0.0.0.0/0"]
    ));
}
