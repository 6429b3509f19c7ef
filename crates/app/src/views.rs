//! The HTML templates. Pages link `/static/style.css` and `/static/app.js` (the newest
//! timeline page also `/static/live.js`) and contain no inline script or style, so they
//! pass `Content-Security-Policy: default-src 'self'`.
//! maud escapes every interpolated value, so user text cannot become markup.

use axum::http::StatusCode;
use db::{Post, User};
use maud::{html, Markup, DOCTYPE};

use crate::error::ErrorPage;
use crate::validate::POST_MAX_CHARS;

/// What every page's frame needs: the site's name, who is logged in, and the CSRF token for
/// the logout button.
pub(crate) struct Chrome<'a> {
    pub(crate) site_name: &'a str,
    pub(crate) user: Option<&'a User>,
    /// `None` on pages rendered without a visit (error pages), which then show no forms.
    pub(crate) csrf: Option<&'a str>,
}

fn layout(chrome: &Chrome<'_>, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (chrome.site_name) }
                link rel="stylesheet" href="/static/style.css";
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                script src="/static/app.js" defer {}
            }
            body {
                header.topbar {
                    div.wrap {
                        a.brand href="/" { (chrome.site_name) }
                        nav {
                            @match (chrome.user, chrome.csrf) {
                                (Some(user), Some(csrf)) => {
                                    a.me href={ "/u/" (user.username) } { "@" (user.username) }
                                    form.inline method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button.link type="submit" { "Log out" }
                                    }
                                }
                                _ => {
                                    a href="/login" { "Log in" }
                                    a.button href="/signup" { "Sign up" }
                                }
                            }
                        }
                    }
                }
                main.wrap { (content) }
                footer.wrap { (chrome.site_name) " — say it in 280 characters." }
            }
        }
    }
}

/// A draft post being re-shown after a validation error.
pub(crate) struct Draft<'a> {
    pub(crate) body: &'a str,
    pub(crate) error: Option<&'a str>,
}

/// The timeline: a compose box for logged-in users, then everyone's posts. `live`: the
/// newest page, where `live.js` adds new posts at the top as `/live` pushes them.
pub(crate) fn home(
    chrome: &Chrome<'_>,
    draft: &Draft<'_>,
    posts: &[Post],
    next_before: Option<i64>,
    live: bool,
) -> Markup {
    let content = html! {
        @if let (Some(_), Some(csrf)) = (chrome.user, chrome.csrf) {
            form.card.compose method="post" action="/posts" {
                input type="hidden" name="csrf" value=(csrf);
                label.sr-only for="body" { "Your post" }
                @if let Some(error) = draft.error {
                    p.error role="alert" { (error) }
                }
                textarea #body name="body" rows="3" data-max=(POST_MAX_CHARS)
                    placeholder="What's happening?" required { (draft.body) }
                div.compose-footer {
                    span.counter data-counter-for="body" aria-live="polite" {}
                    button type="submit" { "Post" }
                }
            }
        } @else {
            section.card.welcome {
                h1 { "Welcome to " (chrome.site_name) }
                p { "See what people are saying. "
                    a href="/signup" { "Sign up" } " or " a href="/login" { "log in" }
                    " to join in." }
            }
        }
        h2.section-title { "Latest posts" }
        (post_list(posts, "/", next_before, live))
        @if live {
            script src="/static/live.js" defer {}
        }
    };
    layout(chrome, "Home", content)
}

/// One user's page.
pub(crate) fn profile(
    chrome: &Chrome<'_>,
    user: &User,
    posts: &[Post],
    next_before: Option<i64>,
) -> Markup {
    let base = format!("/u/{}", user.username);
    let content = html! {
        section.card.profile {
            h1 { "@" (user.username) }
            p.muted { "Joined " (date(user.created_at)) }
        }
        (post_list(posts, &base, next_before, false))
    };
    layout(chrome, &format!("@{}", user.username), content)
}

/// Which account form to show.
#[derive(Clone, Copy)]
pub(crate) enum AccountForm {
    Signup,
    Login,
}

/// The signup or login form, with what the user typed (never the password) and an error.
pub(crate) fn account_form(
    chrome: &Chrome<'_>,
    kind: AccountForm,
    csrf: &str,
    username: &str,
    error: Option<&str>,
) -> Markup {
    let (title, action, button, autocomplete) = match kind {
        AccountForm::Signup => ("Sign up", "/signup", "Create account", "new-password"),
        AccountForm::Login => ("Log in", "/login", "Log in", "current-password"),
    };
    let content = html! {
        form.card.account method="post" action=(action) {
            h1 { (title) }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            input type="hidden" name="csrf" value=(csrf);
            label for="username" { "Username" }
            input #username type="text" name="username" value=(username) required
                autocomplete="username" autocapitalize="none" spellcheck="false"
                minlength="3" maxlength="32" pattern="[A-Za-z0-9_]+";
            @if let AccountForm::Signup = kind {
                p.hint { "3–32 letters, digits or underscores." }
            }
            label for="password" { "Password" }
            input #password type="password" name="password" required
                autocomplete=(autocomplete) minlength="8" maxlength="128";
            @if let AccountForm::Signup = kind {
                p.hint { "At least 8 characters." }
            }
            button type="submit" { (button) }
            @match kind {
                AccountForm::Signup => p.switch { "Already have an account? " a href="/login" { "Log in" } },
                AccountForm::Login => p.switch { "New here? " a href="/signup" { "Sign up" } },
            }
        }
    };
    layout(chrome, title, content)
}

/// The page [`crate::error::finish_response`] renders for an [`ErrorPage`].
pub(crate) fn error_page(site_name: &str, status: StatusCode, page: &ErrorPage) -> Markup {
    let chrome = Chrome {
        site_name,
        user: None,
        csrf: None,
    };
    let content = html! {
        section.card.problem {
            p.status { (status.as_u16()) }
            h1 { (page.title) }
            p { (page.message) }
            p { a href="/" { "Back to the timeline" } }
        }
    };
    layout(&chrome, page.title, content)
}

/// The posts, newest first. `live`: the list is marked for `live.js` (and present, if
/// empty, for new posts to go into).
fn post_list(posts: &[Post], base: &str, next_before: Option<i64>, live: bool) -> Markup {
    html! {
        @if posts.is_empty() {
            p.empty { "Nothing here yet." }
        }
        @if !posts.is_empty() || live {
            ol.posts data-live[live] {
                @for post in posts {
                    li.post data-id=(post.id) {
                        div.meta {
                            a.author href={ "/u/" (post.author) } { "@" (post.author) }
                            " · "
                            time datetime=(iso(post.created_at)) { (date(post.created_at)) }
                        }
                        p.body { (post.body) }
                    }
                }
            }
        }
        @if let Some(before) = next_before {
            nav.pager { a.button href={ (base) "?before=" (before) } { "Older posts" } }
        }
    }
}

fn timestamp(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A readable UTC date and time, e.g. `2025-01-31 14:05 UTC`.
fn date(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    timestamp(unix).format(format).unwrap_or_default()
}

/// The machine-readable form for `<time datetime>`.
fn iso(unix: i64) -> String {
    timestamp(unix)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
