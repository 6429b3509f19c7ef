//! Who is asking: password hashing, session tokens, the cookies that carry them, CSRF, and
//! the extractors [`Visit`] (HTML pages) and [`Caller`] (JSON API).
//!
//! Sessions live in the database so any app server can serve any request. The browser holds
//! a random 32-byte token in the `sid` cookie; the database holds only its SHA-256, so a
//! leaked database cannot be replayed as logins. Forms are protected with the double-submit
//! pattern: a random `csrf` cookie that a cross-site page can neither read nor set, echoed
//! in a hidden form field.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use db::{Position, User};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::error::{ApiError, PageError, Problem};
use crate::{now, Shared, State};

/// Holds the session token.
pub(crate) const SID_COOKIE: &str = "sid";
/// Holds the CSRF token that forms (and `X-CSRF-Token` headers) must echo.
pub(crate) const CSRF_COOKIE: &str = "csrf";
/// Holds the database position of the visitor's last write, for read-your-writes.
pub(crate) const RW_COOKIE: &str = "rw";
/// The header cookie-authenticated API calls use to echo the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_DAYS: i64 = 14;

/// 32 random bytes from the operating system, URL-safe base64 (43 characters).
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database stores in place of a session token.
pub(crate) fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compares secrets in constant time so response timing cannot leak them byte by byte.
/// An empty value never matches: a missing cookie and a missing field are not a pair.
pub(crate) fn tokens_match(submitted: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(submitted.as_bytes().ct_eq(expected.as_bytes()))
}

/// Hashes a password with Argon2id (default parameters, random salt) into a PHC string.
/// Runs on the blocking pool: a hash takes tens of milliseconds of CPU.
pub(crate) async fn hash_password(hashing: &Semaphore, password: String) -> anyhow::Result<String> {
    let _permit = hashing.acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password failed: {e}"))
    })
    .await?
}

/// Checks a password against a stored PHC hash, on the blocking pool.
async fn verify_password(
    hashing: &Semaphore,
    password: String,
    hash: String,
) -> anyhow::Result<bool> {
    let _permit = hashing.acquire().await?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| {
            anyhow::anyhow!("a stored password hash is malformed ({e}); reset that user's password")
        })?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// The user these credentials belong to, or `None` when the username is unknown or the
/// password wrong. Unknown users are checked against a dummy hash so both cases take the
/// same time and the response does not reveal which usernames exist.
pub(crate) async fn authenticate(
    state: &State,
    username: &str,
    password: &str,
    after: Option<&Position>,
) -> Result<Option<User>, Problem> {
    let user = state.db.user_by_name(username, after).await?;
    let hash = user
        .as_ref()
        .map_or_else(|| state.dummy_hash.clone(), |u| u.password_hash.clone());
    let valid = verify_password(&state.hashing, password.to_owned(), hash).await?;
    Ok(user.filter(|_| valid))
}

/// Stores a new session for `user_id` and returns its token (for the cookie or the API
/// caller) and the position of the write.
pub(crate) async fn start_session(
    state: &State,
    user_id: i64,
) -> Result<(String, Position), Problem> {
    let token = random_token();
    let now = now();
    let expires_at = now + SESSION_DAYS * 24 * 60 * 60;
    let written = state
        .db
        .create_session(&hash_token(&token), user_id, now, expires_at)
        .await?;
    Ok((token, written.position))
}

/// The session cookie: HttpOnly so scripts cannot steal it, Lax so following a link from
/// another site still arrives logged in.
pub(crate) fn session_cookie(token: String, secure: bool) -> Cookie<'static> {
    Cookie::build((SID_COOKIE, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(time::Duration::days(SESSION_DAYS))
        .build()
}

/// The CSRF cookie: Strict, so no cross-site request ever carries it.
fn csrf_cookie(token: String, secure: bool) -> Cookie<'static> {
    Cookie::build((CSRF_COOKIE, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

/// Adds the read-your-writes cookie after a write.
pub(crate) fn remember_write(jar: CookieJar, position: &Position, secure: bool) -> CookieJar {
    jar.add(
        Cookie::build((RW_COOKIE, position.encode()))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(secure)
            .build(),
    )
}

/// Tells the browser to drop the session cookie.
pub(crate) fn forget_session(jar: CookieJar) -> CookieJar {
    jar.remove(Cookie::build(SID_COOKIE).path("/"))
}

/// The read-your-writes position from a request's cookies (`None` when absent or stale).
pub(crate) fn position_from(jar: &CookieJar) -> Option<Position> {
    jar.get(RW_COOKIE).and_then(|c| Position::decode(c.value()))
}

/// A browser's visit to an HTML page: who is logged in, the CSRF token its forms must carry,
/// and its cookies (including a freshly minted CSRF cookie, which the page must send back).
pub(crate) struct Visit {
    pub(crate) user: Option<User>,
    /// Hash of the `sid` cookie's token when one was sent, so logout can delete it.
    pub(crate) token_hash: Option<Vec<u8>>,
    /// The position of this visitor's last write, for read-your-writes.
    pub(crate) after: Option<Position>,
    /// The token every form on the page embeds.
    pub(crate) csrf: String,
    /// Return this with the response so a new CSRF cookie reaches the browser.
    pub(crate) jar: CookieJar,
}

impl Visit {
    /// Rejects a form post whose CSRF field does not match the cookie.
    pub(crate) fn check_csrf(&self, submitted: &str) -> Result<(), PageError> {
        if tokens_match(submitted, &self.csrf) {
            Ok(())
        } else {
            Err(Problem::forbidden(
                "This form has expired or was sent from another site. Go back, reload the \
                 page and try again.",
            )
            .into())
        }
    }
}

impl FromRequestParts<Shared> for Visit {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, PageError> {
        let jar = CookieJar::from_headers(&parts.headers);
        let after = position_from(&jar);
        let existing = jar
            .get(CSRF_COOKIE)
            .map(|c| c.value().to_owned())
            .filter(|v| !v.is_empty());
        let (csrf, jar) = match existing {
            Some(csrf) => (csrf, jar),
            None => {
                let csrf = random_token();
                let jar = jar.add(csrf_cookie(csrf.clone(), state.secure_cookies));
                (csrf, jar)
            }
        };
        let token_hash = jar.get(SID_COOKIE).map(|c| hash_token(c.value()));
        let user = match &token_hash {
            Some(hash) => state.db.session_user(hash, now(), after.as_ref()).await?,
            None => None,
        };
        Ok(Visit {
            user,
            token_hash,
            after,
            csrf,
            jar,
        })
    }
}

/// A JSON API call: who is calling (by bearer token, or by session cookie plus
/// `X-CSRF-Token` on unsafe methods) and their read-your-writes position.
pub(crate) struct Caller {
    pub(crate) user: Option<User>,
    /// Hash of the presented token, so logout can delete that session.
    pub(crate) token_hash: Option<Vec<u8>>,
    pub(crate) after: Option<Position>,
}

impl Caller {
    /// The logged-in user, or 401 telling the client how to authenticate.
    pub(crate) fn require(&self) -> Result<&User, ApiError> {
        match (&self.user, &self.token_hash) {
            (Some(user), _) => Ok(user),
            (None, Some(_)) => Err(Problem::unauthorized(
                "the session has expired or was ended; log in again with POST /api/login",
            )
            .into()),
            (None, None) => Err(Problem::unauthorized(
                "log in first: send `Authorization: Bearer <token>` with the token from \
                 POST /api/login",
            )
            .into()),
        }
    }
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let jar = CookieJar::from_headers(&parts.headers);
        let after = position_from(&jar);
        let token_hash = if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Problem::unauthorized(
                        "the Authorization header must be `Bearer <token>` with the token \
                         from POST /api/login",
                    )
                })?;
            Some(hash_token(token))
        } else if let Some(sid) = jar.get(SID_COOKIE) {
            // A cookie rides along on cross-site requests; a custom header with the CSRF
            // token cannot, so unsafe methods must prove they come from our own pages.
            if !parts.method.is_safe() {
                let header = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let cookie = jar.get(CSRF_COOKIE).map(|c| c.value()).unwrap_or_default();
                if !tokens_match(header, cookie) {
                    return Err(Problem::forbidden(
                        "cookie-authenticated API calls must send the `csrf` cookie's value \
                         in an X-CSRF-Token header (or use Authorization: Bearer instead)",
                    )
                    .into());
                }
            }
            Some(hash_token(sid.value()))
        } else {
            None
        };
        let user = match &token_hash {
            Some(hash) => state.db.session_user(hash, now(), after.as_ref()).await?,
            None => None,
        };
        Ok(Caller {
            user,
            token_hash,
            after,
        })
    }
}
