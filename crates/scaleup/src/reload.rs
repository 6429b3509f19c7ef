//! Reloading a running site: the node's side (its site file read again on
//! `POST /reload` or `SIGHUP`, see `net::reload`) and `scaleup reload`.
//!
//! A node re-reads the file it was started with (`scaleup run NODE --site FILE`): that
//! path is the one thing both sides surely agree on, and a file that must be the same
//! on every server is put in place by whoever deploys it, not sent over the admin
//! listener. So `scaleup reload --site FILE` checks FILE (a broken one is refused with
//! its line and column before any node is asked) and finds the nodes' admin
//! listeners in it: give the file the nodes run, once it has its new contents.
//! Without `--site`, that is the file `scaleup up` wrote into its state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use site::{Role, Site};

use crate::configs;

/// The configurations whose certificate a reload reloads.
pub(crate) trait Served {
    /// The certificate and key the node serves, if it ends TLS.
    fn tls(&self) -> Option<&net::tls::TlsFiles>;
}

impl Served for lb::Config {
    fn tls(&self) -> Option<&net::tls::TlsFiles> {
        self.tls.as_ref()
    }
}

impl Served for web::Config {
    fn tls(&self) -> Option<&net::tls::TlsFiles> {
        self.tls.as_ref()
    }
}

/// Builds a role's configuration from a site: `configs::lb`, `configs::web`.
type Build<C> = fn(&Site, &str, cluster::wire::ConfigHash) -> anyhow::Result<C>;

/// A node's site file, as `net::reload` asks for it.
pub(crate) struct SiteFile<C> {
    path: PathBuf,
    name: String,
    /// The site the node runs now: a reload is compared with it.
    current: Site,
    /// The bytes of the certificate and key it serves now, to tell a renewed
    /// certificate (same paths, new contents) from an unchanged one.
    certificate: Option<Vec<u8>>,
    /// What [`net::reload::Source::prepare`] read, until it is committed.
    pending: Option<(Site, Option<Vec<u8>>)>,
    build: Build<C>,
}

impl<C: Served> SiteFile<C> {
    /// The file at `path` of node `name`, which runs `site` with `config` now.
    pub fn new(path: &Path, name: &str, site: &Site, config: &C, build: Build<C>) -> Self {
        SiteFile {
            path: path.to_path_buf(),
            name: name.to_string(),
            current: site.clone(),
            certificate: certificate_bytes(config),
            pending: None,
            build,
        }
    }
}

/// The certificate and key files' contents, or `None` when the node ends no TLS or
/// they cannot be read (then loading them says why).
fn certificate_bytes<C: Served>(config: &C) -> Option<Vec<u8>> {
    let files = config.tls()?;
    let mut bytes = std::fs::read(&files.cert).ok()?;
    bytes.extend(std::fs::read(&files.key).ok()?);
    Some(bytes)
}

impl<C: Served + Send + 'static> net::reload::Source<C> for SiteFile<C> {
    fn prepare(&mut self) -> Result<(C, serde_json::Value), String> {
        let (site, hash) = crate::run::load(&self.path).map_err(|e| format!("{e:#}"))?;
        let mut changes = configs::diff(&self.current, &site, &self.name)?;
        let config = (self.build)(&site, &self.name, hash).map_err(|e| format!("{e:#}"))?;
        let certificate = certificate_bytes(&config);
        if certificate.is_some() && certificate != self.certificate {
            changes.applied.push(format!(
                "certificate {}: new handshakes get the new one, open connections go on",
                config
                    .tls()
                    .map(|f| f.cert.display().to_string())
                    .unwrap_or_default()
            ));
        }
        self.pending = Some((site, certificate));
        Ok((
            config,
            changes.to_json(&self.name, &cluster::wire::hex(&hash)),
        ))
    }

    fn commit(&mut self) {
        if let Some((site, certificate)) = self.pending.take() {
            self.current = site;
            self.certificate = certificate;
        }
    }
}

/// How long one node may take to reload (a certificate to read, a log to open).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// `scaleup reload [--site FILE] [NODE...]`: checks the file, then asks each node (or
/// those named) to reload it and prints what changed on each. Fails when the file is
/// broken (no node is asked), or when a node refused or could not be reached.
pub fn reload(args: &crate::SiteArgs, only: &[String]) -> anyhow::Result<()> {
    let path = match &args.site {
        Some(path) => path.clone(),
        None => std::path::absolute(&args.state_dir)?.join("site.toml"),
    };
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: give the site file the nodes run with --site FILE (without it, \
         the one `scaleup up` wrote into --state-dir)",
        path.display()
    );
    let site = site::load(&path).map_err(|e| {
        anyhow::anyhow!("{e}\nnothing was reloaded: every node keeps its configuration")
    })?;
    for name in only {
        anyhow::ensure!(
            site.node(name).is_some(),
            "there is no node called `{name}` in {}",
            path.display()
        );
    }
    let token = crate::admin::token(&site)?;
    let nodes: Vec<(Role, site::Node)> = site
        .nodes()
        .filter(|(_, n)| only.is_empty() || only.contains(&n.name))
        .map(|(r, n)| (r, n.clone()))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = Vec::new();
    runtime.block_on(async {
        for (role, node) in &nodes {
            let name = &node.name;
            if *role == Role::App {
                println!(
                    "{name}: an application server takes no reload: its settings are read at \
                     start (restart it to apply a change to it)"
                );
                continue;
            }
            let answer = tokio::time::timeout(
                RELOAD_TIMEOUT,
                crate::admin::post(node.admin, "/reload", &token),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {RELOAD_TIMEOUT:?}")));
            match answer {
                Ok((200, body)) => print!("{}", describe(name, &body)),
                Ok((status, body)) => {
                    println!("{name}: refused ({status}): {}", body.trim());
                    failed.push(name.clone());
                }
                Err(e) => {
                    println!("{name}: not reached at {}: {e:#}", node.admin);
                    failed.push(name.clone());
                }
            }
        }
    });
    anyhow::ensure!(
        failed.is_empty(),
        "not reloaded on {}; the others run the new file",
        failed.join(", ")
    );
    Ok(())
}

/// One node's answer, for a person.
fn describe(name: &str, body: &str) -> String {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(body) else {
        return format!("{name}: reloaded: {}\n", body.trim());
    };
    let list = |key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (applied, upgrade) = (list("applied"), list("needs_upgrade"));
    let config = doc["config"].as_str().unwrap_or("?");
    let mut out = if applied.is_empty() && upgrade.is_empty() {
        format!("{name}: reloaded (config {config}): nothing changed for it\n")
    } else {
        format!("{name}: reloaded (config {config})\n")
    };
    for line in applied {
        out.push_str(&format!("  applied: {line}\n"));
    }
    for line in upgrade {
        out.push_str(&format!("  needs `upgrade` (kept as it was): {line}\n"));
    }
    out
}
