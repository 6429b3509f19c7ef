//! TLS for the nodes that end it: the site's certificate (its own PEM files, or a
//! self-signed one for the site's name made once in the state directory), TLS 1.2
//! and 1.3 with the `ring` provider, and HTTP/2 or HTTP/1.1 chosen by ALPN.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the self-signed certificate of site `name` lives: `STATE_DIR/tls/NAME.crt`
/// and `.key`.
pub fn self_signed_files(state_dir: &Path, name: &str) -> TlsFiles {
    let dir = state_dir.join("tls");
    TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Makes the self-signed certificate of site `name` (ECDSA P-256, for the name,
/// `localhost` and `127.0.0.1`) in `state_dir` unless it already exists, so every node
/// and every run serves the same certificate and a browser told to trust it once keeps
/// trusting it.
pub fn ensure_self_signed(state_dir: &Path, name: &str) -> anyhow::Result<TlsFiles> {
    let files = self_signed_files(state_dir, name);
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let names = vec![name.to_string(), "localhost".into(), "127.0.0.1".into()];
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)
        .with_context(|| format!("cannot make a certificate for {name}"))?;
    let dir = files.cert.parent().with_context(|| {
        format!(
            "{} is not in a folder: set the site's state_dir",
            files.cert.display()
        )
    })?;
    // Private: the folder will hold the key (`scaleup run` may be first to make it).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The key first and the certificate last: a certificate file means the pair is whole.
    write_atomically(&files.key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The rustls server configuration for `files`: TLS 1.3 and 1.2, ALPN `h2` then
/// `http/1.1`.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(live_server_config(files)?.0)
}

/// The certificate a TLS listener hands out, which a reload can replace: the next
/// handshake gets the new one, a connection already open goes on with the old.
#[derive(Debug)]
pub struct LiveCert(arc_swap::ArcSwap<CertifiedKey>);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl LiveCert {
    /// Loads `files` and serves them from the next handshake on; on an error the
    /// certificate in use stays.
    pub fn reload(&self, files: &TlsFiles) -> anyhow::Result<()> {
        self.0.store(Arc::new(certified_key(files)?));
        Ok(())
    }
}

/// [`server_config`], with the handle that replaces its certificate.
pub fn live_server_config(
    files: &TlsFiles,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<LiveCert>)> {
    let live = Arc::new(LiveCert(arc_swap::ArcSwap::from_pointee(certified_key(
        files,
    )?)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(live.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), live))
}

/// The certificate chain and key of `files`, checked to belong together.
fn certified_key(files: &TlsFiles) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read certificates from {}: {e}; give a PEM file with the chain, \
                 the site's certificate first",
                files.cert.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate; give the chain, the site's certificate first",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a private key from {}: {e}; give the certificate's key as PEM \
             (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    let unusable = || {
        format!(
            "{} and {} do not make a usable certificate and key pair",
            files.cert.display(),
            files.key.display()
        )
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .with_context(unusable)?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().with_context(unusable)?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_certificate_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_self_signed(dir.path(), "www.foobar.com").unwrap();
        assert_eq!(files.cert, dir.path().join("tls/www.foobar.com.crt"));
        let first = std::fs::read(&files.cert).unwrap();
        ensure_self_signed(dir.path(), "www.foobar.com").unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), first, "made once");
        let config = server_config(&files).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
        let folder = files.key.parent().unwrap();
        let mode = std::fs::metadata(folder).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "so is its folder");
    }

    #[test]
    fn a_missing_certificate_file_says_what_to_give() {
        let files = TlsFiles {
            cert: "/nonexistent/site.crt".into(),
            key: "/nonexistent/site.key".into(),
        };
        let err = server_config(&files).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/site.crt") && err.contains("PEM"),
            "{err}"
        );
    }
}
