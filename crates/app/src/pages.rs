//! The HTML pages and their form posts. Every form post checks CSRF first, re-renders its
//! form with a 4xx status on bad input (keeping what the user typed, except passwords), and
//! redirects with 303 on success so a reload does not post twice.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::CookieJar;
use db::{DbError, Post};
use serde::Deserialize;

use crate::auth::{self, Visit};
use crate::error::{PageError, Problem};
use crate::views::{self, AccountForm, Chrome, Draft};
use crate::{now, validate, Shared, State as AppState};

/// Posts per page.
const PAGE_SIZE: u32 = 20;

/// `?before=ID`: show posts older than this one.
#[derive(Deserialize)]
pub(crate) struct Paging {
    before: Option<i64>,
}

/// The signup and login forms. Fields default to empty so a tampered form gets a helpful
/// validation message instead of a parse error.
#[derive(Deserialize)]
pub(crate) struct AccountFields {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The compose form, and the logout button's form (which only carries `csrf`).
#[derive(Deserialize)]
pub(crate) struct PostFields {
    #[serde(default)]
    body: String,
    #[serde(default)]
    csrf: String,
}

fn chrome<'a>(state: &'a AppState, visit: &'a Visit) -> Chrome<'a> {
    Chrome {
        site_name: &state.site_name,
        user: visit.user.as_ref(),
        csrf: Some(&visit.csrf),
    }
}

fn paging(query: Result<Query<Paging>, QueryRejection>) -> Result<Option<i64>, PageError> {
    query.map(|Query(p)| p.before).map_err(|_| {
        Problem::bad_request("That page link is malformed; start again from the timeline.").into()
    })
}

fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(fields)| fields).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // Say nothing of what was sent: it is not read, let alone shown back.
            Problem::too_large(
                "That form was far larger than any post or login; nothing was saved. Go back \
                 and send something shorter.",
            )
            .into()
        } else {
            Problem::bad_request(format!(
                "The form could not be read ({rejection}); reload the page and try again."
            ))
            .into()
        }
    })
}

/// How much of a refused draft the compose box shows again: a draft up to twice the limit
/// comes back whole so its writer can trim it; a longer one is cut to the limit, so the
/// page never echoes back a large input.
fn draft_to_show(body: &str) -> &str {
    if body.chars().count() <= 2 * validate::POST_MAX_CHARS {
        return body;
    }
    match body.char_indices().nth(validate::POST_MAX_CHARS) {
        Some((cut, _)) => &body[..cut],
        None => body,
    }
}

/// Splits a page fetched with one extra row into the page and the cursor for the next one.
pub(crate) fn split_page(mut posts: Vec<Post>, page_size: u32) -> (Vec<Post>, Option<i64>) {
    let more = posts.len() > page_size as usize;
    posts.truncate(page_size as usize);
    let next = if more {
        posts.last().map(|p| p.id)
    } else {
        None
    };
    (posts, next)
}

pub(crate) async fn home(
    State(state): State<Shared>,
    visit: Visit,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Response, PageError> {
    let before = paging(query)?;
    let draft = Draft {
        body: "",
        error: None,
    };
    render_home(&state, &visit, before, &draft, StatusCode::OK).await
}

async fn render_home(
    state: &AppState,
    visit: &Visit,
    before: Option<i64>,
    draft: &Draft<'_>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let posts = state
        .db
        .timeline(before, PAGE_SIZE + 1, visit.after.as_ref())
        .await?;
    let (posts, next) = split_page(posts, PAGE_SIZE);
    // Only the newest page grows at the top as posts arrive.
    let live = before.is_none();
    let page = views::home(&chrome(state, visit), draft, &posts, next, live);
    Ok((status, visit.jar.clone(), page).into_response())
}

pub(crate) async fn user_page(
    State(state): State<Shared>,
    visit: Visit,
    Path(username): Path<String>,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Response, PageError> {
    let before = paging(query)?;
    let name = username.to_lowercase();
    let Some(user) = state.db.user_by_name(&name, visit.after.as_ref()).await? else {
        return Err(Problem::not_found(format!("Nobody here goes by @{name}.")).into());
    };
    let posts = state
        .db
        .user_posts(user.id, before, PAGE_SIZE + 1, visit.after.as_ref())
        .await?;
    let (posts, next) = split_page(posts, PAGE_SIZE);
    let page = views::profile(&chrome(&state, &visit), &user, &posts, next);
    Ok((visit.jar.clone(), page).into_response())
}

pub(crate) async fn not_found() -> PageError {
    Problem::not_found(
        "There is no page at this address. Check the link, or start from the timeline.",
    )
    .into()
}

fn account_page(
    state: &AppState,
    visit: &Visit,
    kind: AccountForm,
    status: StatusCode,
    username: &str,
    error: Option<&str>,
) -> Response {
    // What the user typed comes back only when it is short enough to be a username.
    let username = if username.len() <= 64 { username } else { "" };
    let page = views::account_form(&chrome(state, visit), kind, &visit.csrf, username, error);
    (status, visit.jar.clone(), page).into_response()
}

/// The account form again, with a refusal's status, message and `Retry-After` (throttled,
/// busy, or a password over the length limit).
fn refused_page(
    state: &AppState,
    visit: &Visit,
    kind: AccountForm,
    username: &str,
    problem: Problem,
) -> Response {
    let mut response = account_page(
        state,
        visit,
        kind,
        problem.status,
        username,
        Some(&problem.message),
    );
    if let Some(seconds) = problem.retry_after {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    response
}

/// Refusals shown on the form itself: bad input (400), throttled (429), or a full hash
/// queue (503 with `Retry-After`). Other problems, a database that is down included, become
/// error pages.
fn is_refusal(problem: &Problem) -> bool {
    match problem.status {
        StatusCode::BAD_REQUEST | StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::SERVICE_UNAVAILABLE => problem.retry_after.is_some(),
        _ => false,
    }
}

pub(crate) async fn signup_form(State(state): State<Shared>, visit: Visit) -> Response {
    if visit.user.is_some() {
        return Redirect::to("/").into_response();
    }
    account_page(
        &state,
        &visit,
        AccountForm::Signup,
        StatusCode::OK,
        "",
        None,
    )
}

pub(crate) async fn login_form(State(state): State<Shared>, visit: Visit) -> Response {
    if visit.user.is_some() {
        return Redirect::to("/").into_response();
    }
    account_page(&state, &visit, AccountForm::Login, StatusCode::OK, "", None)
}

pub(crate) async fn signup(
    State(state): State<Shared>,
    visit: Visit,
    fields: Result<Form<AccountFields>, FormRejection>,
) -> Result<Response, PageError> {
    let fields = form(fields)?;
    visit.check_csrf(&fields.csrf)?;
    let retry = |status, error| {
        Ok(account_page(
            &state,
            &visit,
            AccountForm::Signup,
            status,
            &fields.username,
            Some(error),
        ))
    };
    let username = match validate::username(&fields.username) {
        Ok(name) => name,
        Err(error) => return retry(StatusCode::BAD_REQUEST, error),
    };
    let password = match validate::password(&fields.password) {
        Ok(password) => password.to_owned(),
        Err(error) => return retry(StatusCode::BAD_REQUEST, error),
    };
    let hash = match auth::hash_password(&state.hashing, Some(visit.client.address), password).await
    {
        Ok(hash) => hash,
        Err(problem) if is_refusal(&problem) => {
            return Ok(refused_page(
                &state,
                &visit,
                AccountForm::Signup,
                &fields.username,
                problem,
            ))
        }
        Err(problem) => return Err(problem.into()),
    };
    let user = match state.db.create_user(&username, &hash, now()).await {
        Ok(written) => written.value,
        Err(DbError::Conflict { .. }) => {
            return retry(
                StatusCode::CONFLICT,
                "That username is taken; choose another.",
            )
        }
        Err(e) => return Err(e.into()),
    };
    log_in(&state, visit.jar.clone(), user.id).await
}

pub(crate) async fn login(
    State(state): State<Shared>,
    visit: Visit,
    fields: Result<Form<AccountFields>, FormRejection>,
) -> Result<Response, PageError> {
    let fields = form(fields)?;
    visit.check_csrf(&fields.csrf)?;
    let attempt = auth::authenticate(
        &state,
        &visit.client,
        &fields.username,
        &fields.password,
        visit.after.as_ref(),
    )
    .await;
    match attempt {
        Ok(Some(user)) => log_in(&state, visit.jar.clone(), user.id).await,
        Err(problem) if is_refusal(&problem) => Ok(refused_page(
            &state,
            &visit,
            AccountForm::Login,
            &fields.username,
            problem,
        )),
        Err(problem) => Err(problem.into()),
        Ok(None) => Ok(account_page(
            &state,
            &visit,
            AccountForm::Login,
            StatusCode::UNAUTHORIZED,
            &fields.username,
            Some("Wrong username or password."),
        )),
    }
}

/// Starts a session, sets its cookie (and a new pre-session id, so CSRF tokens rotate) and
/// sends the browser to the timeline.
async fn log_in(state: &AppState, jar: CookieJar, user_id: i64) -> Result<Response, PageError> {
    let (token, position) = auth::start_session(state, user_id).await?;
    let jar = auth::log_in_cookies(state, jar, token);
    let jar = auth::remember_write(state, jar, &position);
    Ok((jar, Redirect::to("/")).into_response())
}

pub(crate) async fn logout(
    State(state): State<Shared>,
    visit: Visit,
    fields: Result<Form<PostFields>, FormRejection>,
) -> Result<Response, PageError> {
    let fields = form(fields)?;
    visit.check_csrf(&fields.csrf)?;
    let mut jar = auth::log_out_cookies(&state, visit.jar.clone());
    if let Some(hash) = &visit.token_hash {
        let written = state.db.delete_session(hash).await?;
        jar = auth::remember_write(&state, jar, &written.position);
    }
    Ok((jar, Redirect::to("/")).into_response())
}

pub(crate) async fn create_post(
    State(state): State<Shared>,
    visit: Visit,
    fields: Result<Form<PostFields>, FormRejection>,
) -> Result<Response, PageError> {
    let fields = form(fields)?;
    visit.check_csrf(&fields.csrf)?;
    let Some(user) = &visit.user else {
        return Err(Problem::unauthorized("Your session has ended. Log in again to post.").into());
    };
    let body = match validate::post_body(&fields.body) {
        Ok(body) => body,
        Err(error) => {
            let draft = Draft {
                body: draft_to_show(&fields.body),
                error: Some(error),
            };
            return render_home(&state, &visit, None, &draft, StatusCode::BAD_REQUEST).await;
        }
    };
    let written = state.db.create_post(user.id, body, now()).await?;
    state.feed.publish(&written.value);
    let jar = auth::remember_write(&state, visit.jar.clone(), &written.position);
    Ok((jar, Redirect::to("/")).into_response())
}
