//! The application's server key: the secret that makes CSRF tokens and the read-your-writes
//! cookie unforgeable.
//!
//! A CSRF token is an HMAC of the visitor's session (or, before login, of a random
//! pre-session id), so a value an attacker plants in both the cookie and the form does not
//! pass: without the key nobody can compute the token that goes with a cookie. The `rw`
//! cookie carries a MAC for the same reason: a forged database position would make a
//! replica wait (holding a connection) for a write that never happened.
//!
//! Every app server of a site must use the same key, or a form rendered by one would be
//! refused by another. The key comes from the environment variable [`KEY_ENV`] when it is
//! set (several machines: give them all the same value), else from the file [`KEY_FILE`]
//! in the site's state directory, created once (mode 0600) by whichever app server starts
//! first; `scaleup up` runs every node on one state directory, so they all share it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The environment variable that, when set, holds the key (at least 32 characters; use
/// e.g. `openssl rand -base64 32`). It wins over the key file.
pub const KEY_ENV: &str = "SCALEUP_APP_KEY";
/// The key file's name inside the state directory.
pub const KEY_FILE: &str = "app.key";
/// Shortest key accepted from the environment: 32 bytes, as many as HMAC-SHA256 can use.
const MIN_ENV_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The server key. Cheap to clone; never printed (`Debug` hides it).
#[derive(Clone)]
pub struct AppKey {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(..)")
    }
}

impl AppKey {
    /// A key from raw bytes (tests, or a caller with its own secret store).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> AppKey {
        AppKey {
            bytes: bytes.into(),
        }
    }

    /// A fresh random key, for a single app server that keeps nothing across restarts
    /// (tests). Forms rendered before a restart are then refused after it.
    pub fn random() -> AppKey {
        let mut bytes = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        AppKey { bytes }
    }

    /// The site's key: `$SCALEUP_APP_KEY` when set, else `state_dir/app.key`, created with
    /// 32 random bytes (mode 0600) when missing.
    pub fn load(state_dir: &Path) -> anyhow::Result<AppKey> {
        match std::env::var(KEY_ENV) {
            Ok(value) => {
                anyhow::ensure!(
                    value.len() >= MIN_ENV_KEY_BYTES,
                    "{KEY_ENV} holds {} bytes; use at least {MIN_ENV_KEY_BYTES} random ones \
                     (e.g. `export {KEY_ENV}=$(openssl rand -base64 32)`), the same value on \
                     every app server",
                    value.len()
                );
                Ok(AppKey::from_bytes(value.into_bytes()))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{KEY_ENV} is not valid UTF-8; use printable characters (base64)")
            }
            Err(std::env::VarError::NotPresent) => Self::load_file(&state_dir.join(KEY_FILE)),
        }
    }

    /// Reads the key file, creating it first when it does not exist. Creation is atomic:
    /// the key is written to a private temporary file and hard-linked into place, which
    /// fails if another app server got there first; then everyone reads the one file.
    fn load_file(path: &Path) -> anyhow::Result<AppKey> {
        if !path.exists() {
            create_key_file(path)?;
        }
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the app key {}; check its permissions, or set {KEY_ENV}",
                path.display()
            )
        })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() >= 32);
        let bytes = bytes.ok_or_else(|| {
            anyhow::anyhow!(
                "the app key {} is damaged (it must hold 32 bytes as URL-safe base64); delete \
                 it to make a new one (everyone will have to log in again), or set {KEY_ENV}",
                path.display()
            )
        })?;
        Ok(AppKey::from_bytes(bytes))
    }

    /// HMAC-SHA256 of `data` under this key, for `purpose` (so a tag made for one use can
    /// never be replayed as another's): URL-safe base64, 43 characters.
    pub(crate) fn tag(&self, purpose: &str, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(purpose, data).finalize().into_bytes())
    }

    /// Whether `tag` is [`AppKey::tag`] of `data` for `purpose`, compared in constant time.
    pub(crate) fn verify(&self, purpose: &str, data: &[u8], tag: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(tag) {
            Ok(bytes) => self.mac(purpose, data).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, purpose: &str, data: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac
    }
}

/// Writes 32 random bytes to `path` (0600), unless another process created it first.
fn create_key_file(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Private: the state directory holds the key (`scaleup run` may be first to make it).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let temp: PathBuf = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(format!("{}\n", URL_SAFE_NO_PAD.encode(bytes)).as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| match std::fs::hard_link(&temp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
    let _ = std::fs::remove_file(&temp);
    written.with_context(|| {
        format!(
            "cannot create the app key {} (is the state directory writable?); or set {KEY_ENV}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_for_their_data_and_purpose() {
        let key = AppKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
        let tag = key.tag("csrf", b"session");
        assert_eq!(tag.len(), 43);
        assert!(key.verify("csrf", b"session", &tag));
        assert!(!key.verify("csrf", b"other", &tag));
        assert!(!key.verify("rw", b"session", &tag));
        assert!(!key.verify("csrf", b"session", "not base64!"));
        assert!(!AppKey::random().verify("csrf", b"session", &tag));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = AppKey::load_file(&state.join(KEY_FILE)).unwrap();
        let b = AppKey::load_file(&state.join(KEY_FILE)).unwrap();
        assert_eq!(a.bytes, b.bytes, "a second app server reads the same key");
        assert_eq!(a.bytes.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(&state).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");

        std::fs::write(state.join(KEY_FILE), "short").unwrap();
        let err = AppKey::load_file(&state.join(KEY_FILE)).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
