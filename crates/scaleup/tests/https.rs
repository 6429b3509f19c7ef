//! HTTPS end to end with curl, through a load balancer in both modes: `tcp` (TLS
//! passed through to the web server, the client's address in a PROXY header) and
//! `http` (TLS ended at the load balancer), over HTTP/2 and HTTP/1.1, with the
//! plain-HTTP frontend's redirect.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// What curl saw: status, protocol version, response head.
struct Seen {
    status: u16,
    version: String,
    head: String,
}

/// `curl` with `args` and the self-signed certificate of the site in `state` as the
/// one trusted authority.
fn curl(state: &Path, args: &[&str]) -> Seen {
    let cert = state.join("tls/www.foobar.com.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg("--cacert")
        .arg(&cert)
        .args(args)
        .output()
        .expect("curl must be installed (scripts/install-test-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, last) = text.rsplit_once('\n').unwrap();
    let (status, version) = last.split_once(' ').unwrap();
    Seen {
        status: status.parse().unwrap(),
        version: version.to_string(),
        head: head.to_ascii_lowercase(),
    }
}

fn up(base: u16, state: &Path, site: Option<&Path>) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("up");
    match site {
        Some(site) => cmd.arg("--site").arg(site),
        None => cmd
            .arg("--base-port")
            .arg(base.to_string())
            .arg("--state-dir")
            .arg(state),
    };
    let up = Proc::spawn("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(120));
    up
}

#[test]
fn https_passes_through_the_load_balancer_to_the_web_server_with_the_client_address() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let _up = up(base, state.path(), None);
    // The site's floating HTTPS address (lb1 holds it).
    let lb1 = format!("https://localhost:{}", base + 5);

    // From 127.0.0.2, so the web server's log can tell the client from the balancer.
    let h2 = curl(
        state.path(),
        &["--http2", "--interface", "127.0.0.2", &format!("{lb1}/")],
    );
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"));
    assert!(h2.head.contains("strict-transport-security: max-age="));
    assert!(h2.head.contains("x-frame-options: deny"));

    let h1 = curl(
        state.path(),
        &[
            "--http1.1",
            "--interface",
            "127.0.0.2",
            &format!("{lb1}/static/style.css"),
        ],
    );
    assert_eq!((h1.status, h1.version.as_str()), (200, "1.1"));
    assert!(h1.head.contains("cache-control: public, max-age=3600"));

    // lb2's own HTTPS frontend is the same site.
    let lb2 = curl(
        state.path(),
        &["--http2", &format!("https://localhost:{}/", base + 7)],
    );
    assert_eq!(lb2.status, 200);

    // The web server logged the real client, over the protocol the client spoke.
    let log = state.path().join("web1-access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let has = |needle: &str| {
            text.lines()
                .any(|l| l.starts_with("127.0.0.2 ") && l.contains(needle))
        };
        if has("\"GET / HTTP/2.0\" 200") && has("\"GET /static/style.css HTTP/1.1\" 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the access log lacks the client's lines:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn https_ends_at_the_load_balancer_in_http_mode_and_plain_http_redirects() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let text = site::default_site(base, &state.path().to_string_lossy(), "test-secret")
        .replace("tls_mode = \"tcp\"", "tls_mode = \"http\"");
    let site = state.path().join("site.toml");
    std::fs::write(&site, text).unwrap();
    let _up = up(base, state.path(), Some(&site));
    let lb1 = format!("https://localhost:{}", base + 5);

    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let seen = curl(state.path(), &[flag, &format!("{lb1}/")]);
        assert_eq!((seen.status, seen.version.as_str()), (200, version));
        assert!(
            seen.head.contains("strict-transport-security"),
            "HSTS over HTTPS ended at the balancer: {}",
            seen.head
        );
    }

    // Plain HTTP (redirected by default): 308 to the same path on this balancer's
    // HTTPS port...
    let plain = format!("http://127.0.0.1:{base}");
    let seen = curl(state.path(), &[&format!("{plain}/signup?next=1")]);
    assert_eq!(seen.status, 308);
    assert!(
        seen.head.contains(&format!(
            "location: https://127.0.0.1:{}/signup?next=1",
            base + 5
        )),
        "{}",
        seen.head
    );
    // ... except health checks and ACME challenges.
    assert_eq!(
        curl(state.path(), &[&format!("{plain}/healthz")]).status,
        200
    );
    let acme = curl(
        state.path(),
        &[&format!("{plain}/.well-known/acme-challenge/missing")],
    );
    assert_ne!(acme.status, 308);
}
