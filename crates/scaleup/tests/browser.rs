//! A real browser through the whole site over HTTPS: headless Chromium (Debian's
//! `chromium`) driven over the DevTools protocol opens the site through a load
//! balancer (TLS passed through to the web server), signs up, writes a post, and
//! the test reads the rendered page. The connection must be HTTP/2; a screenshot is
//! kept in `target/test-artifacts/`.
//!
//! Chromium only ever reaches loopback: every other name fails to resolve, and any
//! proxy use would hit a closed port.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::chromium::*;
use common::*;
use serde_json::json;

/// How long the page may take to show what a step waits for.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate: what
/// `--ignore-certificate-errors-spki-list` trusts, so only this certificate passes.
fn spki_hash(cert: &Path) -> String {
    use sha2::Digest;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(cert)
        .output()
        .expect("openssl must be installed (scripts/install-test-deps installs it)");
    assert!(out.status.success(), "openssl x509 failed");
    let pem = String::from_utf8(out.stdout).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
}

#[test]
fn chromium_signs_up_and_posts_over_https_and_http2() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let _up = start_up(base, state.path());
    let origin = format!("https://localhost:{}", base + 5);

    let spki = spki_hash(&state.path().join("tls/www.foobar.com.crt"));
    let profile = tempfile::tempdir().unwrap();
    let _browser = launch(
        profile.path(),
        &[
            "--window-size=1100,900",
            &format!("--ignore-certificate-errors-spki-list={spki}"),
        ],
    );
    let mut page = Page::first_tab(devtools_port(profile.path()));
    page.call("Page.enable", json!({}));

    page.call("Page.navigate", json!({"url": format!("{origin}/signup")}));
    page.wait_until(
        "document.readyState === 'complete' && !!document.querySelector('form.account')",
        "the signup form",
        PAGE_WAIT,
    );
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol"),
        "h2",
        "the browser must speak HTTP/2 to the site"
    );
    page.eval(
        "document.querySelector('#username').value = 'carol';
         document.querySelector('#password').value = 'a long enough password';
         document.querySelector('form.account button[type=submit]').click(); true",
    );
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete' \
         && !!document.querySelector('form.compose')",
        "the timeline after signing up",
        PAGE_WAIT,
    );

    page.eval(
        "document.querySelector('#body').value = 'Hello over HTTP/2 from headless Chromium';
         document.querySelector('form.compose button[type=submit]').click(); true",
    );
    page.wait_until(
        "document.readyState === 'complete' && document.body.innerText.includes('Hello over HTTP/2 from headless Chromium')",
        "the new post on the timeline",
        PAGE_WAIT,
    );
    let text = page.eval("document.body.innerText").to_string();
    assert!(text.contains("carol"), "the page names the author: {text}");

    page.screenshot("chromium-signup-post.png");

    // The web server saw the browser's requests as HTTP/2, from the browser itself.
    let log = std::fs::read_to_string(state.path().join("web1-access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"POST /posts HTTP/2.0\"") && l.contains("Chrome")),
        "no HTTP/2 POST from Chromium in the access log:\n{log}"
    );
}
