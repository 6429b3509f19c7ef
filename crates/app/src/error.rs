//! How failures reach the visitor: [`Problem`] says what went wrong and which status it
//! deserves; [`PageError`] renders it as an HTML page, [`ApiError`] as JSON.
//!
//! HTML error pages need the site's chrome (its name), which a bare `IntoResponse` cannot
//! see, so [`PageError`] only marks the response and [`finish_response`], a middleware with
//! the application state, renders the page. The same middleware adds the security headers
//! every response carries.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use db::DbError;

use crate::{views, Shared};

/// A failure worth telling the visitor about.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    /// A short heading for the HTML page.
    pub(crate) title: &'static str,
    /// One or two sentences saying what happened and what to do next.
    pub(crate) message: String,
    /// Seconds the client should wait before trying again (`Retry-After`), for 429 and 503.
    pub(crate) retry_after: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Problem {
            status,
            title,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After`, rounded up to whole seconds (at least one).
    pub(crate) fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub(crate) fn too_many(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "Slow down", message).retry_after(wait)
    }

    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", message)
            .retry_after(std::time::Duration::from_secs(1))
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "Too large", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "Please log in", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "Request refused", message)
    }
}

impl From<DbError> for Problem {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Conflict { .. } => {
                Problem::new(StatusCode::CONFLICT, "Already taken", err.to_string())
            }
            DbError::Unavailable { .. } => {
                tracing::warn!(error = %err, "database unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Database unavailable",
                    "The database is unavailable right now, so nothing was saved. \
                     Please try again in a moment.",
                )
            }
            DbError::Other { .. } | DbError::Setup { .. } => {
                tracing::error!(error = %err, "database error");
                internal()
            }
        }
    }
}

impl From<anyhow::Error> for Problem {
    fn from(err: anyhow::Error) -> Self {
        tracing::error!(error = format!("{err:#}"), "internal error");
        internal()
    }
}

fn internal() -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "An internal error stopped this request and nothing was saved. \
         It has been logged; please try again later.",
    )
}

/// A [`Problem`] answered with an HTML page.
#[derive(Debug)]
pub(crate) struct PageError(pub(crate) Problem);

/// A [`Problem`] answered with `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) Problem);

impl From<Problem> for PageError {
    fn from(problem: Problem) -> Self {
        PageError(problem)
    }
}

impl From<DbError> for PageError {
    fn from(err: DbError) -> Self {
        PageError(err.into())
    }
}

impl From<anyhow::Error> for PageError {
    fn from(err: anyhow::Error) -> Self {
        PageError(err.into())
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError(problem)
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        ApiError(err.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError(err.into())
    }
}

/// Marks a response as an error page for [`finish_response`] to render.
#[derive(Clone, Debug)]
pub(crate) struct ErrorPage {
    pub(crate) title: &'static str,
    pub(crate) message: String,
}

/// Sets `Retry-After` when the problem has one.
fn add_retry_after(response: &mut Response, retry_after: Option<u64>) {
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut response = self.0.status.into_response();
        add_retry_after(&mut response, self.0.retry_after);
        response.extensions_mut().insert(ErrorPage {
            title: self.0.title,
            message: self.0.message,
        });
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.0.message }));
        let mut response = (self.0.status, body).into_response();
        add_retry_after(&mut response, self.0.retry_after);
        response
    }
}

/// Headers every response carries. The pages use no inline script or style, so a strict
/// policy costs nothing and blunts any injection that slips past escaping. Pages are
/// personal (who is logged in), so no shared cache may keep them.
const RESPONSE_HEADERS: [(HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Renders marked error pages with the site's chrome and adds [`RESPONSE_HEADERS`].
pub(crate) async fn finish_response(State(state): State<Shared>, response: Response) -> Response {
    let mut response = match response.extensions().get::<ErrorPage>().cloned() {
        Some(page) => {
            let (mut parts, _) = response.into_parts();
            let markup = views::error_page(&state.site_name, parts.status, &page);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(markup.into_string()))
        }
        None => response,
    };
    let headers = response.headers_mut();
    for (name, value) in RESPONSE_HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
