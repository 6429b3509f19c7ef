//! `app`: the foobar application, a small Twitter-like site.
//!
//! It speaks HTTP through an [`axum::Router`] and nothing below it: the caller (the `scaleup`
//! binary) binds sockets, serves the router with hyper and wraps it with metrics and access
//! logs. All state lives in the database ([`db::Db`]), so any number of app servers can run
//! side by side behind the web tier.
//!
//! Layout:
//! - `pages.rs`: the server-rendered HTML pages and their form posts;
//! - `api.rs`: the JSON API under `/api`;
//! - `live.rs`: `GET /live`, the WebSocket that pushes new posts to the timeline page
//!   (made here at once, made through other app servers within a second, by polling);
//! - `views.rs`: the maud templates the pages share;
//! - `auth.rs`: passwords (argon2), session tokens, cookies, CSRF, and the request
//!   extractors that say who is asking;
//! - `key.rs`: the server key that signs CSRF tokens and the `rw` cookie;
//! - `throttle.rs`: login throttling per (account, address) and per address, and the
//!   bounded queue of password hashes;
//! - `client.rs`: the client's address and scheme as the web tier forwards them;
//! - `validate.rs`: the rules for usernames, passwords and posts;
//! - `error.rs`: how failures become HTML error pages or JSON errors (a database that is
//!   down becomes 503, never a panic or a hang);
//! - `assets/`: the stylesheet, script and icon, exported as [`ASSETS`] for the web tier.
//!
//! Read-your-writes: every write stores the database's [`db::Position`] in the `rw` cookie
//! (with a MAC, so a forged one is ignored), and every read hands it back to the database,
//! so a replicated backend can avoid serving a page older than the visitor's own last write.
#![forbid(unsafe_code)]

mod api;
mod auth;
mod client;
mod error;
mod key;
mod live;
mod node;
mod pages;
mod throttle;
mod validate;
mod views;

pub use key::{AppKey, KEY_ENV, KEY_FILE};
pub use node::serve;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

/// The largest request body the application reads by default: its forms and JSON are a
/// few kilobytes, so anything near this is not a real visitor.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the application needs to run.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Where the data lives.
    pub db: db::Config,
    /// Shown in the page header and titles.
    pub site_name: String,
    /// The site has HTTPS (any TLS listener). Its cookies are then `Secure` and named with
    /// the `__Host-` prefix (`__Host-sid`, `__Host-csrf`, `__Host-rw`), and a request the
    /// web tier marks as plain HTTP is served without its cookies (logged out). Without
    /// HTTPS the cookies are `sid`, `csrf` and `rw`, not `Secure`, or browsers on plain
    /// HTTP would drop them and nobody could log in.
    pub https: bool,
    /// Signs CSRF tokens and the read-your-writes cookie; the same for every app server of
    /// a site ([`AppKey::load`]).
    pub key: AppKey,
    /// The addresses of the site's own proxies (web servers, load balancers): forwarding
    /// headers (`X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`) are believed only
    /// from these peers. A router driven in-process (no peer) believes them.
    pub trusted_proxies: Vec<IpAddr>,
    /// Larger request bodies are refused with 413 while they stream in, announced length
    /// or not.
    pub max_body_bytes: usize,
    /// Where the node's access log goes (`None`: standard output): one line per
    /// request with the request id the tiers in front gave it.
    pub access_log: Option<std::path::PathBuf>,
    /// How access-log lines are written.
    pub log_format: net::access_log::LogFormat,
    /// Who may change the running node (`POST /upgrade` on its admin listener).
    pub admin_token: net::admin::Token,
    /// How long a stopping process lets open connections (WebSockets on `/live`
    /// included) finish before it closes them.
    pub drain_timeout: std::time::Duration,
}

impl AppConfig {
    /// A configuration for one app server on its own: SQLite at `db`, no HTTPS, a random
    /// key, no proxies trusted beyond in-process callers, the default body limit.
    pub fn standalone(db: db::Config, site_name: impl Into<String>) -> AppConfig {
        AppConfig {
            db,
            site_name: site_name.into(),
            https: false,
            key: AppKey::random(),
            trusted_proxies: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            access_log: None,
            log_format: net::access_log::LogFormat::Combined,
            admin_token: Ok(None).into(),
            drain_timeout: net::server::Limits::default().drain_timeout,
        }
    }
}

/// A running application: cheap to clone, all clones share one database pool.
#[derive(Clone)]
pub struct App {
    state: Shared,
}

/// The state every handler sees.
pub(crate) type Shared = Arc<State>;

pub(crate) struct State {
    pub(crate) db: db::Db,
    pub(crate) site_name: String,
    /// Copied from [`AppConfig::https`].
    pub(crate) https: bool,
    /// The cookies' names and `Secure` flag, which follow [`AppConfig::https`].
    pub(crate) cookies: auth::CookieNames,
    pub(crate) key: AppKey,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// A real argon2 hash of a random password. Logins for unknown users verify against it,
    /// so a response's timing does not reveal whether a username exists.
    pub(crate) dummy_hash: String,
    /// Argon2 is memory-hard (about 19 MiB per hash) and CPU-heavy: a bounded queue keeps a
    /// burst of logins from exhausting memory, the cores, or the blocking thread pool.
    pub(crate) hashing: throttle::HashQueue,
    /// Failed logins per (account, address) and per address.
    pub(crate) throttle: throttle::LoginThrottle,
    pub(crate) max_body_bytes: usize,
    /// New posts for the `/live` WebSockets.
    pub(crate) feed: Arc<live::Feed>,
}

/// The static files the web tier serves next to the app: `(path, contents)`, with paths
/// relative to the site root (so `static/style.css` is served at `/static/style.css`).
pub static ASSETS: &[(&str, &[u8])] = &[
    (
        "static/style.css",
        include_bytes!("../assets/static/style.css"),
    ),
    ("static/app.js", include_bytes!("../assets/static/app.js")),
    ("static/live.js", include_bytes!("../assets/static/live.js")),
    (
        "static/favicon.svg",
        include_bytes!("../assets/static/favicon.svg"),
    ),
];

impl App {
    /// Opens the database (applying migrations) and prepares the application.
    pub async fn new(config: AppConfig) -> anyhow::Result<App> {
        let db = db::Db::open(&config.db).await?;
        let hashing = throttle::HashQueue::for_this_machine();
        let dummy_hash = auth::hash_password(&hashing, None, auth::random_token())
            .await
            .map_err(|problem| {
                anyhow::anyhow!("making the dummy password hash: {}", problem.message)
            })?;
        let feed = Arc::new(live::Feed::new());
        live::Feed::spawn_poller(Arc::downgrade(&feed), db.clone());
        Ok(App {
            state: Arc::new(State {
                db,
                site_name: config.site_name,
                https: config.https,
                cookies: auth::CookieNames::new(config.https),
                key: config.key,
                trusted_proxies: config.trusted_proxies,
                dummy_hash,
                hashing,
                throttle: throttle::LoginThrottle::new(throttle::PAIR, throttle::ADDRESS),
                max_body_bytes: config.max_body_bytes,
                feed,
            }),
        })
    }

    /// Password hashes and verifications computed since start (`/metrics`; tests use it to
    /// prove a request was refused before any hashing).
    pub fn password_hashes(&self) -> u64 {
        self.state.hashing.hashes()
    }

    /// Login attempts refused with 429 by the throttle since start.
    pub fn logins_throttled(&self) -> u64 {
        self.state.throttle.throttled()
    }

    /// Password hashes refused because the hash queue was full.
    pub fn hashes_refused(&self) -> u64 {
        self.state.hashing.refused()
    }

    /// The database handle, for the binary's `/status` (row counts) and admin health checks.
    pub fn db(&self) -> &db::Db {
        &self.state.db
    }

    /// Every page and API route of the application.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(pages::home))
            .route("/signup", get(pages::signup_form).post(pages::signup))
            .route("/login", get(pages::login_form).post(pages::login))
            .route("/logout", post(pages::logout))
            .route("/posts", post(pages::create_post))
            .route("/u/{username}", get(pages::user_page))
            .route("/healthz", get(healthz))
            .route("/live", get(live::live))
            .fallback(pages::not_found)
            .nest("/api", api::router())
            // Form and JSON extractors stop reading at this many bytes, chunked or not,
            // and the handlers answer 413.
            .layer(DefaultBodyLimit::max(self.state.max_body_bytes))
            .layer(axum::middleware::map_response_with_state(
                self.state.clone(),
                error::finish_response,
            ))
            .with_state(self.state.clone())
    }
}

/// 200 when the database answers, 503 otherwise, so the web tier stops sending traffic to
/// an app server that cannot serve it. The reason goes to the log, not to the (possibly
/// public) response.
async fn healthz(AxumState(state): AxumState<Shared>) -> (StatusCode, &'static str) {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

/// The current time in unix seconds, the unit the database stores.
pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
