//! The JSON API under `/api`, for scripts and other clients. Authenticate with
//! `Authorization: Bearer <token>` (the token comes from `POST /api/login`), or with the
//! browser's session cookie plus an `X-CSRF-Token` header on unsafe methods (the token is
//! `csrf` in `GET /api/me`'s answer). Errors are `{"error": "..."}` with a fitting status;
//! 429 and 503 carry `Retry-After`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::CookieJar;
use db::{Post, User};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{self, Caller};
use crate::client::Client;
use crate::error::{ApiError, Problem};
use crate::pages::split_page;
use crate::{now, validate, Shared};

/// Posts per page when the client does not say.
const DEFAULT_LIMIT: u32 = 20;
/// The most posts one call returns, so a client cannot ask for the whole table.
const MAX_LIMIT: u32 = 100;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/signup", post(signup))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/posts", post(create_post))
        .route("/timeline", get(timeline))
        .route("/users/{username}", get(user))
        .fallback(not_found)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct NewPost {
    body: String,
}

#[derive(Deserialize)]
struct Paging {
    before: Option<i64>,
    limit: Option<u32>,
}

fn user_json(user: &User) -> Value {
    json!({ "id": user.id, "username": user.username, "created_at": user.created_at })
}

/// A post as the API and the `/live` feed show it.
pub(crate) fn post_json(post: &Post) -> Value {
    json!({
        "id": post.id,
        "author": post.author,
        "body": post.body,
        "created_at": post.created_at,
    })
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large("the request body is larger than this API accepts; send less").into()
        } else {
            Problem::bad_request(rejection.body_text()).into()
        }
    })
}

/// The page cursor and a limit clamped to `1..=MAX_LIMIT`.
fn paging(query: Result<Query<Paging>, QueryRejection>) -> Result<(Option<i64>, u32), ApiError> {
    let Query(paging) = query.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let limit = paging.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    Ok((paging.before, limit))
}

/// A page of posts and the cursor for the next page (`null` on the last page).
fn page_json(posts: Vec<Post>, limit: u32) -> (Vec<Value>, Option<i64>) {
    let (posts, next) = split_page(posts, limit);
    (posts.iter().map(post_json).collect(), next)
}

fn bad_input(message: &str) -> ApiError {
    Problem::bad_request(message).into()
}

async fn signup(
    State(state): State<Shared>,
    client: Client,
    jar: CookieJar,
    payload: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let credentials = body(payload)?;
    let username = validate::username(&credentials.username).map_err(bad_input)?;
    let password = validate::password(&credentials.password).map_err(bad_input)?;
    let hash =
        auth::hash_password(&state.hashing, Some(client.address), password.to_owned()).await?;
    // A taken name surfaces as DbError::Conflict, which ApiError answers with 409.
    let written = state.db.create_user(&username, &hash, now()).await?;
    let jar = auth::remember_write(&state, jar, &written.position);
    let reply = json!({ "user": user_json(&written.value) });
    Ok((StatusCode::CREATED, jar, Json(reply)).into_response())
}

async fn login(
    State(state): State<Shared>,
    client: Client,
    jar: CookieJar,
    payload: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let credentials = body(payload)?;
    let after = auth::position_from(&state, &jar);
    let user = auth::authenticate(
        &state,
        &client,
        &credentials.username,
        &credentials.password,
        after.as_ref(),
    )
    .await?
    .ok_or_else(|| Problem::unauthorized("wrong username or password"))?;
    let (token, position) = auth::start_session(&state, user.id).await?;
    let jar = auth::remember_write(&state, jar, &position);
    let reply = json!({ "token": token, "user": user_json(&user) });
    Ok((jar, Json(reply)).into_response())
}

async fn logout(
    State(state): State<Shared>,
    caller: Caller,
    jar: CookieJar,
) -> Result<Response, ApiError> {
    caller.require()?;
    let mut jar = jar;
    if let Some(hash) = &caller.token_hash {
        let written = state.db.delete_session(hash).await?;
        jar = auth::remember_write(&state, jar, &written.position);
    }
    Ok((StatusCode::NO_CONTENT, jar).into_response())
}

/// Who is logged in; for a caller using the session cookie, also the CSRF token its unsafe
/// calls must send in `X-CSRF-Token`.
async fn me(caller: Caller) -> Result<Json<Value>, ApiError> {
    let user = caller.require()?;
    let mut reply = json!({ "user": user_json(user) });
    if let Some(csrf) = &caller.csrf {
        reply["csrf"] = csrf.clone().into();
    }
    Ok(Json(reply))
}

async fn create_post(
    State(state): State<Shared>,
    caller: Caller,
    jar: CookieJar,
    payload: Result<Json<NewPost>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = caller.require()?;
    let new = body(payload)?;
    let text = validate::post_body(&new.body).map_err(bad_input)?;
    let written = state.db.create_post(user.id, text, now()).await?;
    state.feed.publish(&written.value);
    let jar = auth::remember_write(&state, jar, &written.position);
    let reply = json!({ "post": post_json(&written.value) });
    Ok((StatusCode::CREATED, jar, Json(reply)).into_response())
}

async fn timeline(
    State(state): State<Shared>,
    caller: Caller,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (before, limit) = paging(query)?;
    let posts = state
        .db
        .timeline(before, limit + 1, caller.after.as_ref())
        .await?;
    let (posts, next_before) = page_json(posts, limit);
    Ok(Json(json!({ "posts": posts, "next_before": next_before })))
}

async fn user(
    State(state): State<Shared>,
    caller: Caller,
    Path(username): Path<String>,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (before, limit) = paging(query)?;
    let name = username.to_lowercase();
    let user = state
        .db
        .user_by_name(&name, caller.after.as_ref())
        .await?
        .ok_or_else(|| Problem::not_found(format!("no user is called {name}")))?;
    let posts = state
        .db
        .user_posts(user.id, before, limit + 1, caller.after.as_ref())
        .await?;
    let (posts, next_before) = page_json(posts, limit);
    Ok(Json(json!({
        "user": user_json(&user),
        "posts": posts,
        "next_before": next_before,
    })))
}

async fn not_found() -> ApiError {
    Problem::not_found("no such API endpoint; see the routes under /api").into()
}
