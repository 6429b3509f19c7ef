//! Bad input gets a clear error and loses nothing: malformed and oversize requests on
//! the wire, paths that try to leave the document root, and wrong site files.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_and_traversal_requests_are_refused() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    // What the load balancer forwards to the web server: without the redirect to
    // HTTPS, which would answer every path with 308 before it got that far.
    let site = write_plain_http_site(base, state.path());
    let _app = run_node("app1", &site);
    let _web = run_node("web1", &site);
    let _lb = run_node("lb1", &site);
    let lb: SocketAddr = ([127, 0, 0, 1], base + 1).into();
    let web: SocketAddr = ([127, 0, 0, 1], base + 3).into();
    wait_status(&format!("http://{lb}/"), 200, Duration::from_secs(60)).await;
    for (name, addr) in [("lb1", lb), ("web1", web)] {
        let answer = raw_exchange(addr, b"GARBAGE\r\n\r\n");
        assert_eq!(
            status_of(&answer),
            400,
            "{name}: malformed request line: {answer}"
        );
        let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
        assert_eq!(
            status_of(&answer),
            400,
            "{name}: malformed header: {answer}"
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let answer = raw_exchange(addr, big.as_bytes());
        assert_eq!(
            status_of(&answer),
            431,
            "{name}: oversize header: {}",
            &answer[..answer.len().min(200)]
        );

        for path in [
            "/../../etc/passwd",
            "/static/../../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2f..%2f..%2fetc/passwd",
            "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
            "/..\\..\\etc\\passwd",
        ] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let answer = raw_exchange(addr, request.as_bytes());
            assert!(
                !answer.contains("root:x:0:0"),
                "{name}: {path} leaked /etc/passwd"
            );
            let status = status_of(&answer);
            assert!(
                matches!(status, 400 | 404),
                "{name}: {path} answered {status}"
            );
        }
        // Dotfiles are never served.
        let answer = raw_exchange(
            addr,
            b"GET /.env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&answer), 404, "{name}: dotfile");
    }
    // The servers are still fine after all that.
    wait_status(&format!("http://{lb}/"), 200, Duration::from_secs(5)).await;
}

/// `scaleup check` on a site file: exit 1 and `file:line:column: message`.
fn check(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let out = scaleup()
        .arg("check")
        .arg("--site")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "check accepted a wrong site file:\n{text}"
    );
    String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "site.toml")
}

/// The line (1-based) of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn wrong_https_keys_are_refused_with_line_and_column() {
    let base = site::default_site(30000, "/tmp/state", "test-secret");

    let mode = base.replacen("tls_mode = \"tcp\"", "tls_mode = \"tls\"", 1);
    let err = check(&mode);
    let line = line_of(&mode, "tls_mode");
    assert!(
        err.contains(&format!("site.toml:{line}:12: unknown tls_mode `tls`")),
        "{err}"
    );

    // Passthrough needs the web server's HTTPS listener.
    let no_web_tls = base.replacen("tls_listen = \"127.0.0.1:30008\"\n", "", 1);
    let err = check(&no_web_tls);
    let line = line_of(&no_web_tls, "tls_listen");
    assert!(
        err.contains(&format!(
            "site.toml:{line}:14: this HTTPS frontend passes TLS through"
        )) && err.contains("web1"),
        "{err}"
    );

    let half_pair = base.replacen("[tls]\n", "[tls]\ncert = \"site.crt\"\n", 1);
    let err = check(&half_pair);
    let line = line_of(&half_pair, "cert =");
    assert!(
        err.contains(&format!("site.toml:{line}:8: `cert` and `key` go together")),
        "{err}"
    );

    let clash = base.replacen("127.0.0.1:30008", "127.0.0.1:30004", 1);
    let err = check(&clash);
    assert!(
        err.contains("`127.0.0.1:30004` is already used by node `web1`"),
        "{err}"
    );

    let bad_rule = base.replacen("match = \"/static/*\"", "match = \"static/*\"", 1);
    let err = check(&bad_rule);
    let line = line_of(&bad_rule, "match =");
    assert!(
        err.contains(&format!(
            "site.toml:{line}:9: `static/*` is not a path pattern"
        )),
        "{err}"
    );

    let bad_header = base.replacen(
        "[[web.cache]]",
        "[web.headers]\n\"x-bad header\" = \"1\"\n\n[[web.cache]]",
        1,
    );
    let err = check(&bad_header);
    assert!(err.contains("`x-bad header` is not a header name"), "{err}");
}

#[test]
fn wrong_site_files_are_refused_with_line_and_column() {
    let base = site::default_site(30000, "/tmp/state", "test-secret");

    let unknown = base.replacen("algorithm = \"roundrobin\"", "algoritm = \"roundrobin\"", 1);
    let err = check(&unknown);
    let line = unknown
        .lines()
        .position(|l| l.starts_with("algoritm"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("site.toml:{line}:1: unknown field `algoritm`")),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");

    let duplicate = base.replacen("name = \"lb2\"", "name = \"lb1\"", 1);
    let err = check(&duplicate);
    let line = duplicate
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "name = \"lb1\"")
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(
        err.contains(&format!(
            "site.toml:{line}:8: node name `lb1` is already used"
        )),
        "{err}"
    );

    let dangling = base.replacen("servers = [\"web1\"]", "servers = [\"web1\", \"web9\"]", 1);
    let err = check(&dangling);
    let line = dangling
        .lines()
        .position(|l| l.starts_with("servers ="))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "site.toml:{line}:20: there is no node called `web9`"
        )),
        "{err}"
    );

    let wrong_role = base.replacen("apps = [\"app1\"]", "apps = [\"lb1\"]", 1);
    let err = check(&wrong_role);
    assert!(
        err.contains("`lb1` is a lb node, but `apps` lists app nodes"),
        "{err}"
    );

    let bad_duration = base.replacen("interval = \"1s\"", "interval = \"soon\"", 1);
    let err = check(&bad_duration);
    assert!(err.contains("`soon` is not a duration"), "{err}");

    // A good file passes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, &base).unwrap();
    let out = scaleup()
        .arg("check")
        .arg("--site")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn what_would_break_at_run_time_is_refused_by_check() {
    let base = site::default_site(30000, "/tmp/state", "test-secret");

    // A health path goes into a request line as it is.
    let spaced = base.replacen("path = \"/healthz\"", "path = \"/health check\"", 1);
    let err = check(&spaced);
    let line = line_of(&spaced, "path = \"/health check");
    assert!(
        err.contains(&format!(
            "site.toml:{line}:16: `/health check` cannot be a health-check path: a space"
        )),
        "{err}"
    );
    assert!(err.contains("help:") && err.contains("%20"), "{err}");
    let relative = base.replacen("path = \"/healthz\"", "path = \"healthz\"", 1);
    assert!(
        check(&relative).contains("does not start with `/`"),
        "{}",
        check(&relative)
    );

    // A cluster signs its heartbeats, or says in words that it does not.
    let no_secret = base.replacen("secret = \"test-secret\"\n", "", 1);
    let err = check(&no_secret);
    assert!(err.contains("this cluster has no secret"), "{err}");
    assert!(
        err.contains("help:") && err.contains("insecure_no_secret = true"),
        "{err}"
    );
    let empty = base.replacen("secret = \"test-secret\"", "secret = \"\"", 1);
    let err = check(&empty);
    let line = line_of(&empty, "secret = ");
    assert!(
        err.contains(&format!("site.toml:{line}:10: the cluster secret is empty")),
        "{err}"
    );

    // ... and `explain` lists that choice as a risk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        base.replacen("secret = \"test-secret\"", "insecure_no_secret = true", 1),
    )
    .unwrap();
    let out = scaleup()
        .arg("explain")
        .arg("--site")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("insecure_no_secret = true"), "{text}");
    assert!(text.contains("not authenticated"), "{text}");
}

#[test]
fn explain_names_the_single_points_of_failure() {
    let out = scaleup()
        .arg("explain")
        .arg("--base-port")
        .arg("30000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("```mermaid"), "{text}");
    for node in ["lb1", "lb2", "web1", "app1"] {
        assert!(text.contains(node), "{node} missing:\n{text}");
    }
    let lower = text.to_lowercase();
    assert!(lower.contains("single point of failure"), "{text}");
    assert!(lower.contains("tls"), "{text}");
}
