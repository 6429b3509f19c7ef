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
//! - `views.rs`: the maud templates the pages share;
//! - `auth.rs`: passwords (argon2), session tokens, cookies, CSRF, and the request
//!   extractors that say who is asking;
//! - `validate.rs`: the rules for usernames, passwords and posts;
//! - `error.rs`: how failures become HTML error pages or JSON errors (a database that is
//!   down becomes 503, never a panic or a hang);
//! - `assets/`: the stylesheet, script and icon, exported as [`ASSETS`] for the web tier.
//!
//! Read-your-writes: every write stores the database's [`db::Position`] in the `rw` cookie,
//! and every read hands it back to the database, so a replicated backend can avoid serving
//! a page older than the visitor's own last write.
#![forbid(unsafe_code)]

mod api;
mod auth;
mod error;
mod node;
mod pages;
mod validate;
mod views;

pub use node::serve;

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

/// What the application needs to run.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Where the data lives.
    pub db: db::Config,
    /// Shown in the page header and titles.
    pub site_name: String,
    /// Mark cookies `Secure` when browsers reach the site over HTTPS, so the session cookie
    /// never travels in clear text. Leave it off for plain-HTTP local runs, or browsers would
    /// drop the cookies and nobody could log in.
    pub secure_cookies: bool,
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
    /// Copied from [`AppConfig::secure_cookies`].
    pub(crate) secure_cookies: bool,
    /// A real argon2 hash of a random password. Logins for unknown users verify against it,
    /// so a response's timing does not reveal whether a username exists.
    pub(crate) dummy_hash: String,
    /// Argon2 is memory-hard (about 19 MiB per hash): capping concurrent hashes keeps a burst
    /// of logins from exhausting memory or the blocking thread pool.
    pub(crate) hashing: Semaphore,
}

/// The static files the web tier serves next to the app: `(path, contents)`, with paths
/// relative to the site root (so `static/style.css` is served at `/static/style.css`).
pub static ASSETS: &[(&str, &[u8])] = &[
    (
        "static/style.css",
        include_bytes!("../assets/static/style.css"),
    ),
    ("static/app.js", include_bytes!("../assets/static/app.js")),
    (
        "static/favicon.svg",
        include_bytes!("../assets/static/favicon.svg"),
    ),
];

impl App {
    /// Opens the database (applying migrations) and prepares the application.
    pub async fn new(config: AppConfig) -> anyhow::Result<App> {
        let db = db::Db::open(&config.db).await?;
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hashing = Semaphore::new(permits);
        let dummy_hash = auth::hash_password(&hashing, auth::random_token()).await?;
        Ok(App {
            state: Arc::new(State {
                db,
                site_name: config.site_name,
                secure_cookies: config.secure_cookies,
                dummy_hash,
                hashing,
            }),
        })
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
            .fallback(pages::not_found)
            .nest("/api", api::router())
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
