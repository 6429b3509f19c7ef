//! Who is asking: password hashing, session tokens, the cookies that carry them, CSRF, and
//! the extractors [`Visit`] (HTML pages) and [`Caller`] (JSON API).
//!
//! Sessions live in the database so any app server can serve any request. The browser holds
//! a random 32-byte token in the session cookie; the database holds only its SHA-256, so a
//! leaked database cannot be replayed as logins.
//!
//! Cookies: when the site has HTTPS they are `Secure` and carry the `__Host-` prefix
//! (`__Host-sid`, `__Host-csrf`, `__Host-rw`), which browsers accept only over HTTPS, with
//! `Path=/` and no `Domain`: a plain-HTTP attacker or a sibling subdomain cannot plant or
//! overwrite them, and they never travel in clear. A site without HTTPS uses the bare
//! names (`sid`, `csrf`, `rw`), or nobody could log in.
//!
//! CSRF: every form (and every cookie-authenticated API call that changes something)
//! carries a token that is an HMAC, under the server key ([`crate::key`]), of the
//! visitor's session token, or before login of a random pre-session id kept in the `csrf`
//! cookie. A cross-site page cannot read the token, and a value planted in the cookie is
//! useless without the key. Logging in (and out) changes both the session and the
//! pre-session id, so tokens rotate. Unsafe requests a browser marks as coming from
//! another site (`Sec-Fetch-Site: cross-site` or `same-site`) are refused outright.
//!
//! The read-your-writes cookie carries a MAC too: a forged position is ignored.

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use db::{Position, User};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::client::Client;
use crate::error::{ApiError, PageError, Problem};
use crate::key::AppKey;
use crate::throttle::{Busy, HashQueue, Lane};
use crate::{now, validate, Shared, State};

/// The header cookie-authenticated API calls use to echo the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_DAYS: i64 = 14;
/// What the CSRF token's HMAC is for (kept apart from the `rw` cookie's).
const CSRF_PURPOSE: &str = "csrf";
/// What the `rw` cookie's HMAC is for.
const RW_PURPOSE: &str = "rw";

/// The names and `Secure` flag of the application's cookies, fixed by whether the site has
/// HTTPS (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CookieNames {
    /// Holds the session token.
    pub(crate) sid: &'static str,
    /// Holds the pre-session id that CSRF tokens are bound to before login.
    pub(crate) csrf: &'static str,
    /// Holds the signed database position of the visitor's last write.
    pub(crate) rw: &'static str,
    pub(crate) secure: bool,
}

impl CookieNames {
    pub(crate) fn new(https: bool) -> CookieNames {
        if https {
            CookieNames {
                sid: "__Host-sid",
                csrf: "__Host-csrf",
                rw: "__Host-rw",
                secure: true,
            }
        } else {
            CookieNames {
                sid: "sid",
                csrf: "csrf",
                rw: "rw",
                secure: false,
            }
        }
    }
}

/// 32 random bytes from the operating system, URL-safe base64 (43 characters).
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `text` looks like a [`random_token`]: anything else in a cookie is replaced.
fn is_token(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// Turns a refusal from the hash queue into the answer the client gets.
fn busy(busy: Busy) -> Problem {
    match busy {
        Busy::Full => Problem::busy(
            "The server is checking too many passwords right now. Wait a second and try again.",
        ),
        Busy::Client => Problem::too_many(
            "Another login from your address is still being checked. Wait a second and try \
             again.",
            std::time::Duration::from_secs(1),
        ),
    }
}

/// Hashes a password with Argon2id (default parameters, random salt) into a PHC string, in
/// the bounded [`HashQueue`] on the blocking pool: a hash takes tens of milliseconds of CPU
/// and about 19 MiB. The caller has already checked the password's length. A signup waits
/// in the normal lane; the server's own hash (`client` is `None`) goes first.
pub(crate) async fn hash_password(
    hashing: &HashQueue,
    client: Option<IpAddr>,
    password: String,
) -> Result<String, Problem> {
    let lane = if client.is_some() {
        Lane::Normal
    } else {
        Lane::First
    };
    let hashed = hashing
        .run(client, lane, move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password failed: {e}"))
        })
        .await
        .map_err(busy)?;
    Ok(hashed??)
}

/// Checks a password against a stored PHC hash, in the [`HashQueue`].
async fn verify_password(
    hashing: &HashQueue,
    client: IpAddr,
    lane: Lane,
    password: String,
    hash: String,
) -> Result<bool, Problem> {
    let verified = hashing
        .run(Some(client), lane, move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| {
                anyhow::anyhow!(
                    "a stored password hash is malformed ({e}); reset that user's password"
                )
            })?;
            Ok::<_, anyhow::Error>(
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await
        .map_err(busy)?;
    Ok(verified??)
}

/// The throttling key for a login name: trimmed, lowercased, and cut to a bounded length
/// so a guesser cannot make the server keep megabyte-long keys.
fn account_key(username: &str) -> String {
    username.trim().to_lowercase().chars().take(64).collect()
}

/// The user these credentials belong to, or `None` when the username is unknown or the
/// password wrong. In order, and before any hashing: a password over the length limit is
/// refused (400); a throttled (account, address) or address gets 429 with `Retry-After`
/// ([`crate::throttle::LoginThrottle`]). Unknown users are checked against a dummy hash so
/// both cases take the same time and the response does not reveal which usernames exist.
pub(crate) async fn authenticate(
    state: &State,
    client: &Client,
    username: &str,
    password: &str,
    after: Option<&Position>,
) -> Result<Option<User>, Problem> {
    if let Err(message) = validate::password_length(password) {
        return Err(Problem::bad_request(message));
    }
    let account = account_key(username);
    let lane = match state.throttle.begin(&account, client.address) {
        Ok(lane) => lane,
        Err(wait) => {
            tracing::info!(client = %client.address, "login throttled");
            return Err(Problem::too_many(
                format!(
                    "Too many failed logins from your address. Wait {} seconds and try again.",
                    wait.as_secs().max(1)
                ),
                wait,
            ));
        }
    };
    // A name the signup rules refuse cannot belong to anyone: no need to hash.
    let Ok(name) = validate::username(username) else {
        return Ok(None);
    };
    let user = state.db.user_by_name(&name, after).await;
    let user = match user {
        Ok(user) => user,
        Err(e) => {
            state.throttle.refund(&account, client.address);
            return Err(e.into());
        }
    };
    let hash = user
        .as_ref()
        .map_or_else(|| state.dummy_hash.clone(), |u| u.password_hash.clone());
    let checked = verify_password(
        &state.hashing,
        client.address,
        lane,
        password.to_owned(),
        hash,
    )
    .await;
    let valid = match checked {
        Ok(valid) => valid,
        Err(problem) => {
            // Nothing was checked: the attempt does not count.
            state.throttle.refund(&account, client.address);
            return Err(problem);
        }
    };
    let user = user.filter(|_| valid);
    if user.is_some() {
        state.throttle.succeeded(&account, client.address);
    }
    Ok(user)
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

/// The CSRF token for forms bound to `binding` (a session token or a pre-session id).
fn csrf_token(key: &AppKey, binding: &str) -> String {
    key.tag(CSRF_PURPOSE, binding.as_bytes())
}

/// Starts a browser session: the session cookie (HttpOnly so scripts cannot steal it, Lax
/// so following a link from another site still arrives logged in) and a fresh pre-session
/// id, so the CSRF tokens of before the login are worth nothing after it.
pub(crate) fn log_in_cookies(state: &State, jar: CookieJar, token: String) -> CookieJar {
    let names = state.cookies;
    let session = Cookie::build((names.sid, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(names.secure)
        .max_age(time::Duration::days(SESSION_DAYS))
        .build();
    jar.add(session).add(csrf_cookie(names, random_token()))
}

/// The pre-session cookie: Strict, so no cross-site request ever carries it.
fn csrf_cookie(names: CookieNames, id: String) -> Cookie<'static> {
    Cookie::build((names.csrf, id))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(names.secure)
        .build()
}

/// Adds the read-your-writes cookie after a write: the position and its MAC.
pub(crate) fn remember_write(state: &State, jar: CookieJar, position: &Position) -> CookieJar {
    let encoded = position.encode();
    let tag = state.key.tag(RW_PURPOSE, encoded.as_bytes());
    jar.add(
        Cookie::build((state.cookies.rw, format!("{encoded}.{tag}")))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(state.cookies.secure)
            .build(),
    )
}

/// Ends a browser session: drops the session cookie and starts a new pre-session id.
pub(crate) fn log_out_cookies(state: &State, jar: CookieJar) -> CookieJar {
    let names = state.cookies;
    let gone = Cookie::build(names.sid)
        .path("/")
        .secure(names.secure)
        .build();
    jar.remove(gone).add(csrf_cookie(names, random_token()))
}

/// The read-your-writes position from a request's cookies: `None` when absent, stale, or
/// without a valid MAC (forged), which only costs a possibly older page.
pub(crate) fn position_from(state: &State, jar: &CookieJar) -> Option<Position> {
    read_position(&state.key, jar.get(state.cookies.rw)?.value())
}

/// The cookie form is `POSITION.MAC` (the MAC is URL-safe base64, so it has no `.`).
fn read_position(key: &AppKey, value: &str) -> Option<Position> {
    let (encoded, tag) = value.rsplit_once('.')?;
    if !key.verify(RW_PURPOSE, encoded.as_bytes(), tag) {
        tracing::debug!("ignoring an rw cookie with a bad signature");
        return None;
    }
    Position::decode(encoded)
}

/// The cookies a request may use. In a site with HTTPS, a request the web tier says came
/// over plain HTTP gets none: its cookies crossed the network in clear, so they do not
/// log anyone in (browsers do not send `__Host-` cookies over HTTP anyway).
fn usable_cookies(state: &State, headers: &HeaderMap, client: &Client) -> CookieJar {
    if state.https && client.plain_http {
        CookieJar::new()
    } else {
        CookieJar::from_headers(headers)
    }
}

/// Refuses unsafe requests that the browser says come from another site. Browsers set
/// `Sec-Fetch-Site` themselves and pages cannot forge it; clients that do not send it
/// (scripts, older browsers) still face the token check.
fn check_fetch_site(parts: &Parts) -> Result<(), Problem> {
    if parts.method.is_safe() {
        return Ok(());
    }
    match parts.headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        Some(b"cross-site") | Some(b"same-site") => Err(Problem::forbidden(
            "This request was sent by another site and was refused. Use this site's own \
             pages.",
        )),
        _ => Ok(()),
    }
}

/// A browser's visit to an HTML page: who is logged in, the CSRF token its forms must carry,
/// and its cookies (including a freshly minted pre-session cookie, which the page must send
/// back).
pub(crate) struct Visit {
    pub(crate) user: Option<User>,
    /// Hash of the session cookie's token when one was sent, so logout can delete it.
    pub(crate) token_hash: Option<Vec<u8>>,
    /// The position of this visitor's last write, for read-your-writes.
    pub(crate) after: Option<Position>,
    /// The token every form on the page embeds.
    pub(crate) csrf: String,
    /// Return this with the response so a new pre-session cookie reaches the browser.
    pub(crate) jar: CookieJar,
    /// Who is asking, for login throttling.
    pub(crate) client: Client,
    /// The site has HTTPS but this request came over plain HTTP.
    insecure: bool,
}

impl Visit {
    /// Rejects a form post whose CSRF field is not the token for this visitor.
    pub(crate) fn check_csrf(&self, submitted: &str) -> Result<(), PageError> {
        if tokens_match(submitted, &self.csrf) {
            Ok(())
        } else if self.insecure {
            Err(Problem::forbidden(
                "This site keeps forms and logins on HTTPS. Open it with https:// and try \
                 again.",
            )
            .into())
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
        check_fetch_site(parts)?;
        let client = Client::of(parts, &state.trusted_proxies);
        let names = state.cookies;
        let jar = usable_cookies(state, &parts.headers, &client);
        let after = position_from(state, &jar);
        let sid = jar
            .get(names.sid)
            .map(|c| c.value().to_owned())
            .filter(|v| !v.is_empty());
        let pre_session = jar
            .get(names.csrf)
            .map(|c| c.value().to_owned())
            .filter(|v| is_token(v));
        let (pre_session, jar) = match pre_session {
            Some(id) => (id, jar),
            None => {
                let id = random_token();
                let jar = jar.add(csrf_cookie(names, id.clone()));
                (id, jar)
            }
        };
        // Bound to the session cookie when there is one (even an expired one, so a form
        // rendered for it is checked against the same binding), else to the pre-session.
        let csrf = csrf_token(&state.key, sid.as_deref().unwrap_or(&pre_session));
        let token_hash = sid.as_deref().map(hash_token);
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
            client,
            insecure: state.https && client.plain_http,
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
    /// For a caller authenticated by the session cookie: the token its unsafe calls must
    /// send in `X-CSRF-Token` (`GET /api/me` hands it out).
    pub(crate) csrf: Option<String>,
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
        let client = Client::of(parts, &state.trusted_proxies);
        let jar = usable_cookies(state, &parts.headers, &client);
        let after = position_from(state, &jar);
        let mut csrf = None;
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
        } else if let Some(sid) = jar.get(state.cookies.sid).filter(|c| !c.value().is_empty()) {
            // A cookie rides along on cross-site requests; a custom header with the CSRF
            // token cannot, so unsafe methods must prove they come from our own pages.
            check_fetch_site(parts)?;
            let expected = csrf_token(&state.key, sid.value());
            if !parts.method.is_safe() {
                let header = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !tokens_match(header, &expected) {
                    return Err(Problem::forbidden(
                        "cookie-authenticated API calls must send the CSRF token in an \
                         X-CSRF-Token header: take it from GET /api/me (`csrf`) or a page's \
                         hidden `csrf` field, or use Authorization: Bearer instead",
                    )
                    .into());
                }
            }
            csrf = Some(expected);
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
            csrf,
        })
    }
}

impl FromRequestParts<Shared> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Client::of(parts, &state.trusted_proxies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_or_unsigned_position_is_ignored() {
        let key = AppKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
        // What a replica would be asked to wait for: a GTID far in the future.
        let forged = "g0-1-999999999";
        assert!(Position::decode(forged).is_some(), "a well-formed position");
        assert!(read_position(&key, forged).is_none(), "unsigned");
        let tag = key.tag(RW_PURPOSE, forged.as_bytes());
        let signed = format!("{forged}.{tag}");
        assert_eq!(read_position(&key, &signed), Position::decode(forged));
        assert!(
            read_position(&AppKey::random(), &signed).is_none(),
            "another key"
        );
        let tampered = format!("g0-1-999999998.{tag}");
        assert!(read_position(&key, &tampered).is_none(), "tampered");
        let csrf_tag = key.tag(CSRF_PURPOSE, forged.as_bytes());
        assert!(
            read_position(&key, &format!("{forged}.{csrf_tag}")).is_none(),
            "a MAC made for another purpose"
        );
    }

    #[test]
    fn cookie_names_follow_https() {
        let secure = CookieNames::new(true);
        assert_eq!(
            (secure.sid, secure.csrf, secure.rw, secure.secure),
            ("__Host-sid", "__Host-csrf", "__Host-rw", true)
        );
        let plain = CookieNames::new(false);
        assert_eq!(
            (plain.sid, plain.csrf, plain.rw, plain.secure),
            ("sid", "csrf", "rw", false)
        );
    }
}
