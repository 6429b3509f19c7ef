//! The application router driven in-process, against a real SQLite file in a temporary
//! directory. A tiny cookie-keeping client stands in for the browser.

use std::collections::BTreeMap;

use app::{App, AppConfig};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }
}

/// A browser: remembers cookies between requests, and the CSRF token of the last page
/// that had a form.
struct Browser {
    router: Router,
    cookies: BTreeMap<String, String>,
    /// The hidden `csrf` field of the last page that had one.
    csrf: Option<String>,
    /// Sent with every request (`X-Real-IP`, as the web server sets it, to be a client at
    /// some address).
    headers: Vec<(&'static str, String)>,
}

impl Browser {
    fn new(app: &App) -> Self {
        Browser {
            router: app.router(),
            cookies: BTreeMap::new(),
            csrf: None,
            headers: Vec::new(),
        }
    }

    /// A browser whose requests the web tier forwards from client address `ip`.
    fn at(app: &App, ip: &str) -> Self {
        let mut browser = Browser::new(app);
        browser.headers.push(("x-real-ip", ip.to_owned()));
        browser
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sends `request`; after a 303 it also loads the page it points to, as a browser
    /// does (for its cookies and form token), and returns the 303.
    async fn send(&mut self, request: Request<Body>) -> Reply {
        let reply = self.send_once(request).await;
        if reply.status == StatusCode::SEE_OTHER {
            let next = Request::get(reply.location()).body(Body::empty()).unwrap();
            self.send_once(next).await;
        }
        reply
    }

    async fn send_once(&mut self, mut request: Request<Body>) -> Reply {
        for (name, value) in &self.headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        if !self.cookies.is_empty() {
            let cookies = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request
                .headers_mut()
                .insert(header::COOKIE, cookies.parse().unwrap());
        }
        let response = self.router.clone().oneshot(request).await.unwrap();
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        match csrf_field(&body) {
            Some(token) => self.csrf = Some(token),
            // A page without forms: the next form post needs a page with one first.
            None if status == StatusCode::OK && body.starts_with("<!DOCTYPE html>") => {
                self.csrf = None
            }
            None => {}
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// A form post carrying the token of the last page's form, as the real pages do.
    async fn submit(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let csrf = self.csrf.clone().expect("visit a page with a form first");
        let mut fields = fields.to_vec();
        fields.push(("csrf", &csrf));
        self.post_form(path, &fields).await
    }

    async fn api(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }
}

/// The value of a page's hidden `csrf` field.
fn csrf_field(body: &str) -> Option<String> {
    let start = body.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    let len = body[start..].find('"')?;
    Some(body[start..start + len].to_owned())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn config(dir: &tempfile::TempDir) -> AppConfig {
    AppConfig::standalone(
        db::Config::Sqlite {
            path: dir.path().join("foobar.sqlite"),
        },
        "foobar",
    )
}

async fn app(dir: &tempfile::TempDir) -> App {
    App::new(config(dir)).await.unwrap()
}

/// Signs a browser up through the HTML form; it ends logged in.
async fn sign_up(browser: &mut Browser, username: &str, password: &str) {
    browser.get("/signup").await;
    let reply = browser
        .submit("/signup", &[("username", username), ("password", password)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
}

#[tokio::test]
async fn html_signup_post_logout_login() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);

    let form = browser.get("/signup").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"name="csrf""#));
    assert!(form.body.contains("/static/style.css"));
    assert!(!form.body.contains("<script>"), "no inline scripts");
    assert!(!form.body.contains("style="), "no inline styles");
    let csp = form.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'self'"));
    let set_cookies: Vec<_> = form.headers.get_all(header::SET_COOKIE).iter().collect();
    assert!(set_cookies.iter().any(|c| {
        let c = c.to_str().unwrap();
        c.starts_with("csrf=") && c.contains("HttpOnly") && c.contains("SameSite=Strict")
    }));

    let reply = browser
        .submit(
            "/signup",
            &[("username", "Alice"), ("password", "correct horse")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/");
    let sid = reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap())
        .find(|c| c.starts_with("sid="))
        .expect("session cookie");
    assert!(sid.contains("HttpOnly") && sid.contains("SameSite=Lax") && sid.contains("Path=/"));
    assert!(!sid.contains("Secure"));
    assert!(browser.cookie("rw").is_some(), "read-your-writes cookie");

    let home = browser.get("/").await;
    assert!(home.body.contains("@alice"));
    assert!(home.body.contains(r#"action="/posts""#));

    let reply = browser
        .submit("/posts", &[("body", "  Hello <world> & friends  ")])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let home = browser.get("/").await;
    assert!(home.body.contains("Hello &lt;world&gt; &amp; friends"));

    let reply = browser.submit("/logout", &[]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(browser.cookie("sid").is_none());
    let home = browser.get("/").await;
    assert!(home.body.contains(r#"href="/login""#));
    assert!(!home.body.contains(r#"action="/posts""#));
    assert!(
        home.body.contains("Hello &lt;world&gt;"),
        "posts stay public"
    );

    browser.get("/login").await;
    let reply = browser
        .submit(
            "/login",
            &[("username", "alice"), ("password", "wrong password")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("Wrong username or password"));
    assert!(reply.body.contains(r#"value="alice""#));
    assert!(
        !reply.body.contains("wrong password"),
        "passwords are never echoed"
    );

    let reply = browser
        .submit(
            "/login",
            &[("username", "nobody"), ("password", "whatever1")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let reply = browser
        .submit(
            "/login",
            &[("username", "ALICE"), ("password", "correct horse")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(browser.get("/").await.body.contains("@alice"));
    // A logged-in visitor has no use for the login form.
    assert_eq!(browser.get("/login").await.status, StatusCode::SEE_OTHER);

    let page = browser.get("/u/alice").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Hello &lt;world&gt;"));
}

#[tokio::test]
async fn forms_without_a_matching_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);

    // No cookie, no field.
    let fields = [("username", "mallory"), ("password", "password123")];
    let reply = browser.post_form("/signup", &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("expired"));
    assert!(reply.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // Cookie present, field wrong.
    browser.get("/signup").await;
    let mut forged = fields.to_vec();
    forged.push(("csrf", "forged"));
    let reply = browser.post_form("/signup", &forged).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // Cookie present, field missing.
    assert_eq!(
        browser.post_form("/signup", &fields).await.status,
        StatusCode::FORBIDDEN
    );

    // A logged-in user's post without the token is refused too, and nothing is saved.
    sign_up(&mut browser, "victim", "password123").await;
    let reply = browser
        .post_form("/posts", &[("body", "forged"), ("csrf", "nope")])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(app.db().counts(None).await.unwrap().posts, 0);
}

#[tokio::test]
async fn invalid_input_rerenders_the_form_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    browser.get("/signup").await;

    let reply = browser
        .submit(
            "/signup",
            &[("username", "no spaces"), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("letters, digits and underscores"));
    assert!(reply.body.contains(r#"value="no spaces""#));

    let reply = browser
        .submit("/signup", &[("username", "bob"), ("password", "short")])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("at least 8 characters"));

    sign_up(&mut browser, "bob", "password123").await;
    let mut other = Browser::new(&app);
    other.get("/signup").await;
    let reply = other
        .submit(
            "/signup",
            &[("username", "BOB"), ("password", "password456")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("taken"));

    let long = "x".repeat(281);
    let reply = browser.submit("/posts", &[("body", &long)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("280 characters"));
    assert!(reply.body.contains(&long), "the draft is kept");
    // A draft far over the limit is cut to it: the page never echoes a large input.
    let huge = format!("{}{}", "a".repeat(280), "☃".repeat(5000));
    let reply = browser.submit("/posts", &[("body", &huge)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains(&"a".repeat(280)));
    assert!(
        !reply.body.contains('☃'),
        "the part over the limit is not shown"
    );
    let reply = browser.submit("/posts", &[("body", "   ")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Logged out, posting asks to log in.
    let mut stranger = Browser::new(&app);
    stranger.get("/login").await;
    let reply = stranger.submit("/posts", &[("body", "hi")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bearer_api_flow() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut client = Browser::new(&app);
    let credentials = json!({ "username": "Carol", "password": "password123" });

    let reply = client
        .api(Method::POST, "/api/signup", None, Some(credentials.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.json()["user"]["username"], "carol");

    let reply = client
        .api(Method::POST, "/api/signup", None, Some(credentials.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.json()["error"].as_str().unwrap().contains("taken"));

    let reply = client
        .api(
            Method::POST,
            "/api/signup",
            None,
            Some(json!({ "username": "x" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());

    let reply = client
        .api(
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "carol", "password": "nope-nope" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let reply = client
        .api(Method::POST, "/api/login", None, Some(credentials))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43, "32 bytes, base64");

    let reply = client.api(Method::GET, "/api/me", None, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = client.api(Method::GET, "/api/me", Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["user"]["username"], "carol");

    let reply = client
        .api(
            Method::POST,
            "/api/posts",
            None,
            Some(json!({ "body": "anonymous" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = client
        .api(
            Method::POST,
            "/api/posts",
            Some(&token),
            Some(json!({ "body": "" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    for i in 0..25 {
        let reply = client
            .api(
                Method::POST,
                "/api/posts",
                Some(&token),
                Some(json!({ "body": format!("post {i}") })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.json()["post"]["author"], "carol");
    }

    let page = client
        .api(Method::GET, "/api/timeline?limit=10", None, None)
        .await
        .json();
    let posts = page["posts"].as_array().unwrap();
    assert_eq!(posts.len(), 10);
    assert_eq!(posts[0]["body"], "post 24");
    assert_eq!(posts[0]["author"], "carol");
    let next = page["next_before"].as_i64().unwrap();
    assert_eq!(next, posts[9]["id"].as_i64().unwrap());
    let page = client
        .api(
            Method::GET,
            &format!("/api/timeline?limit=10&before={next}"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(page["posts"][0]["body"], "post 14");
    let next = page["next_before"].as_i64().unwrap();
    let page = client
        .api(
            Method::GET,
            &format!("/api/timeline?limit=10&before={next}"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(page["posts"].as_array().unwrap().len(), 5);
    assert!(page["next_before"].is_null());

    let reply = client
        .api(Method::GET, "/api/timeline?before=abc", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let user = client
        .api(Method::GET, "/api/users/CAROL", None, None)
        .await
        .json();
    assert_eq!(user["user"]["username"], "carol");
    assert_eq!(user["posts"].as_array().unwrap().len(), 20);
    let reply = client
        .api(Method::GET, "/api/users/nobody", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"].is_string());

    // The HTML timeline pages the same posts.
    let home = client.get("/").await;
    assert!(home.body.contains("post 24"));
    assert!(!home.body.contains("post 4<"));
    let older = home.body.split("?before=").nth(1).unwrap();
    let before: String = older.chars().take_while(char::is_ascii_digit).collect();
    let page = client.get(&format!("/?before={before}")).await;
    assert!(page.body.contains("post 4<"));
    assert!(!page.body.contains("Older posts"));
    // New posts go live onto the newest page only.
    assert!(home.body.contains("src=\"/static/live.js\""));
    assert!(home.body.contains("data-live"));
    assert!(!page.body.contains("live.js"));
    assert!(!page.body.contains("data-live"));

    let reply = client
        .api(Method::POST, "/api/logout", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = client.api(Method::GET, "/api/me", Some(&token), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("log in again"));

    let reply = client.api(Method::GET, "/api/nothing", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn cookie_api_calls_need_the_csrf_header() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    sign_up(&mut browser, "dana", "password123").await;

    let me = browser.api(Method::GET, "/api/me", None, None).await;
    assert_eq!(
        me.status,
        StatusCode::OK,
        "safe methods need no CSRF header"
    );

    let post = json!({ "body": "from the page" });
    let reply = browser
        .api(Method::POST, "/api/posts", None, Some(post.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // The token comes from GET /api/me (or a page's form), not from a cookie.
    let me = browser.api(Method::GET, "/api/me", None, None).await.json();
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    assert_eq!(csrf, browser.csrf.clone().unwrap(), "the pages' token");
    assert_ne!(Some(csrf.as_str()), browser.cookie("csrf"));
    let request = Request::post("/api/posts")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-csrf-token", csrf)
        .body(Body::from(post.to_string()))
        .unwrap();
    let reply = browser.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[tokio::test]
async fn unknown_users_and_pages_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);

    let reply = browser.get("/u/nobody").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("Nobody here goes by @nobody"));
    assert!(reply.body.contains("<title>Not found · foobar</title>"));

    let reply = browser.get("/no/such/page").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("/static/style.css"));

    let reply = browser.get("/?before=abc").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_closed_database_answers_503_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);

    let health = browser.get("/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok\n")
    );

    app.db().close().await;

    let health = browser.get("/healthz").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("database is unavailable"));
    assert!(page.body.contains("nothing was saved"));
    let reply = browser
        .api(
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "xavier", "password": "password123" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
}

#[test]
fn assets_are_the_files_the_pages_link() {
    let paths: Vec<_> = app::ASSETS.iter().map(|(path, _)| *path).collect();
    assert!(paths.contains(&"static/style.css"));
    assert!(paths.contains(&"static/app.js"));
    assert!(paths.contains(&"static/live.js"));
    assert!(app::ASSETS.iter().all(|(_, bytes)| !bytes.is_empty()));
}

/// The `Set-Cookie` header that sets `name`, if any.
fn set_cookie<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap())
        .find(|c| c.starts_with(&format!("{name}=")))
}

#[tokio::test]
async fn a_forged_csrf_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let fields = [("username", "mallory"), ("password", "password123")];

    // A value of the attacker's choosing planted in the cookie and sent in the form: the
    // double-submit check alone let this through.
    let forged = "A".repeat(43);
    let mut victim = Browser::new(&app);
    victim.cookies.insert("csrf".into(), forged.clone());
    let mut with_token = fields.to_vec();
    with_token.push(("csrf", &forged));
    let reply = victim.post_form("/signup", &with_token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);

    // The same with a planted session cookie, on a logged-in form.
    let mut real = Browser::new(&app);
    sign_up(&mut real, "victim", "password123").await;
    let sid = real.cookie("sid").unwrap().to_owned();
    let mut attacker = Browser::new(&app);
    attacker.cookies.insert("sid".into(), sid.clone());
    attacker.cookies.insert("csrf".into(), forged.clone());
    let reply = attacker
        .post_form("/posts", &[("body", "forged"), ("csrf", &forged)])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // Nor does the pre-session cookie's own value work as the token.
    let pre = real.cookie("csrf").unwrap().to_owned();
    let reply = real
        .post_form("/posts", &[("body", "forged"), ("csrf", &pre)])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(app.db().counts(None).await.unwrap().posts, 0);

    // A browser that says the form came from another site is refused even with the token.
    real.get("/").await;
    real.headers.push(("sec-fetch-site", "cross-site".into()));
    let reply = real.submit("/posts", &[("body", "cross-site")]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    real.headers.clear();
    real.headers.push(("sec-fetch-site", "same-origin".into()));
    let reply = real.submit("/posts", &[("body", "same-origin")]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_csrf_token_is_bound_to_the_session_and_rotates_at_login() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    sign_up(&mut browser, "erin", "password123").await;
    browser.get("/").await;
    let logged_in = browser.csrf.clone().unwrap();
    let reply = browser.submit("/logout", &[]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);

    browser.get("/login").await;
    let before_login = browser.csrf.clone().unwrap();
    assert_ne!(before_login, logged_in);
    let reply = browser
        .submit(
            "/login",
            &[("username", "erin"), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(set_cookie(&reply, "csrf").is_some(), "a new pre-session id");
    browser.get("/").await;
    let after_login = browser.csrf.clone().unwrap();
    assert_ne!(after_login, before_login);
    assert_ne!(after_login, logged_in, "a new session, a new token");

    // The token of before the login (or of the old session) is worth nothing now.
    for stale in [&before_login, &logged_in] {
        let reply = browser
            .post_form("/posts", &[("body", "stale"), ("csrf", stale)])
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let reply = browser.submit("/posts", &[("body", "fresh")]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);

    // App servers of one site share the key, so a form from one posts to another; an app
    // server with another key refuses it.
    let key = app::AppKey::from_bytes(*b"the same key on every app server");
    let mut shared = config(&dir);
    shared.key = key.clone();
    let one = App::new(shared.clone()).await.unwrap();
    let two = App::new(shared).await.unwrap();
    let mut browser = Browser::new(&one);
    browser.get("/signup").await;
    browser.router = two.router();
    let reply = browser
        .submit(
            "/signup",
            &[("username", "frank"), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    browser.get("/").await;
    browser.router = app.router();
    let reply = browser.submit("/posts", &[("body", "other key")]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cookies_are_secure_host_cookies_when_the_site_has_https() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.https = true;
    let app = App::new(config).await.unwrap();
    let mut browser = Browser::new(&app);

    let form = browser.get("/signup").await;
    let csrf = set_cookie(&form, "__Host-csrf").expect("__Host-csrf");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(csrf.contains(attribute), "{csrf}");
    }
    assert!(!csrf.contains("Domain"), "{csrf}");
    assert!(set_cookie(&form, "csrf").is_none());

    let reply = browser
        .submit(
            "/signup",
            &[("username", "gina"), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let sid = set_cookie(&reply, "__Host-sid").expect("__Host-sid");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(sid.contains(attribute), "{sid}");
    }
    assert!(!sid.contains("Domain"), "{sid}");
    let rw = set_cookie(&reply, "__Host-rw").expect("__Host-rw");
    assert!(rw.contains("Secure") && rw.contains("Path=/"), "{rw}");
    assert!(set_cookie(&reply, "sid").is_none());
    assert!(browser.get("/").await.body.contains("@gina"));

    // Over HTTPS (as the web server reports it) the session works...
    browser.headers.push(("x-forwarded-proto", "https".into()));
    assert!(browser.get("/").await.body.contains("@gina"));
    // ...and a request that came over plain HTTP is logged out, even with the cookie.
    browser.headers.clear();
    browser.headers.push(("x-forwarded-proto", "http".into()));
    let page = browser.get("/").await;
    assert!(!page.body.contains("@gina"));
    browser.get("/login").await;
    let reply = browser
        .post_form("/logout", &[("csrf", &browser.csrf.clone().unwrap())])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("https://"), "{}", reply.body);
    browser.headers.clear();

    // The bare names mean nothing on an HTTPS site (they could have been planted over HTTP).
    let sid = browser.cookie("__Host-sid").unwrap().to_owned();
    let mut planted = Browser::new(&app);
    planted.cookies.insert("sid".into(), sid);
    assert!(!planted.get("/").await.body.contains("@gina"));
}

#[tokio::test]
async fn cookies_are_plain_when_the_site_has_no_https() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    let form = browser.get("/signup").await;
    let csrf = set_cookie(&form, "csrf").expect("csrf");
    assert!(!csrf.contains("Secure"), "{csrf}");
    let reply = browser
        .submit(
            "/signup",
            &[("username", "hank"), ("password", "password123")],
        )
        .await;
    let sid = set_cookie(&reply, "sid").expect("sid");
    assert!(!sid.contains("Secure"), "{sid}");
    // The rw cookie is the position and its MAC.
    let rw = browser.cookie("rw").unwrap();
    let (position, tag) = rw.rsplit_once('.').expect("position.mac");
    assert_eq!(position, "sqlite");
    assert_eq!(tag.len(), 43);
}

/// Logs `username` in through the form from the browser's address.
async fn try_login(browser: &mut Browser, username: &str, password: &str) -> Reply {
    if browser.csrf.is_none() {
        browser.get("/login").await;
    }
    browser
        .submit("/login", &[("username", username), ("password", password)])
        .await
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_account_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut real = Browser::at(&app, "198.51.100.7");
    sign_up(&mut real, "ivan", "the real password").await;
    real.submit("/logout", &[]).await;

    let mut guesser = Browser::at(&app, "203.0.113.66");
    let hashes_before = app.password_hashes();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..40 {
        let reply = try_login(&mut guesser, "ivan", &format!("guess number {i}")).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = reply.headers.get(header::RETRY_AFTER).cloned();
            assert!(
                reply.body.contains("Too many failed logins"),
                "{}",
                reply.body
            );
        }
        statuses.push(reply.status);
    }
    let wrong = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((wrong, throttled), (10, 30), "{statuses:?}");
    let seconds: u64 = retry_after
        .expect("Retry-After on 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&seconds), "Retry-After: {seconds}");
    assert_eq!(
        app.password_hashes() - hashes_before,
        10,
        "a throttled attempt hashes nothing"
    );
    // Even the right password waits, from the guesser's address.
    let reply = try_login(&mut guesser, "ivan", "the real password").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);

    // The real user, from their own address, logs in at once.
    let reply = try_login(&mut real, "ivan", "the real password").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);

    // The API is throttled the same way, and says so in JSON.
    let reply = guesser
        .api(
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "ivan", "password": "another guess" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert!(reply.json()["error"].as_str().unwrap().contains("Wait"));

    // One address spraying many accounts meets the per-address limit.
    let mut sprayer = Browser::at(&app, "203.0.113.77");
    let mut first_429 = None;
    for i in 0..40 {
        let reply = try_login(&mut sprayer, &format!("user_{i}"), "password123").await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS && first_429.is_none() {
            first_429 = Some(i);
        }
    }
    assert_eq!(first_429, Some(30));
}

#[tokio::test]
async fn overlong_passwords_are_refused_before_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::at(&app, "192.0.2.10");
    sign_up(&mut browser, "judy", "password123").await;
    browser.submit("/logout", &[]).await;
    browser.get("/login").await;

    let hashes = app.password_hashes();
    let long = "x".repeat(129);
    let reply = try_login(&mut browser, "judy", &long).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body.contains("at most 128 characters"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains(&long));
    let reply = browser
        .submit("/signup", &[("username", "judy2"), ("password", &long)])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = browser
        .api(
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "judy", "password": long })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // 1.5 MiB: refused while it streams in, quickly.
    let huge = "x".repeat(1536 * 1024);
    let started = std::time::Instant::now();
    let reply = try_login(&mut browser, "judy", &huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = browser
        .api(
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "judy", "password": huge })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"].is_string());
    let took = started.elapsed();
    println!("two 1.5 MiB password attempts refused in {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    assert_eq!(app.password_hashes(), hashes, "nothing was hashed");
}

#[tokio::test]
async fn an_oversize_chunked_post_gets_413_and_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    sign_up(&mut browser, "kim", "password123").await;
    browser.get("/").await;
    let csrf = browser.csrf.clone().unwrap();

    // 1.5 MiB in 64 KiB chunks with no length announced (chunked on the wire).
    let mut chunks = vec![format!("csrf={csrf}&body=").into_bytes()];
    chunks.extend((0..24).map(|_| vec![b'Q'; 64 * 1024]));
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
    );
    let request = Request::post("/posts")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from_stream(stream))
        .unwrap();
    let reply = browser.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.status
    );
    assert!(!reply.body.contains("QQQQ"), "no echo of the input");
    assert!(reply.body.len() < 8 * 1024);
    assert_eq!(app.db().counts(None).await.unwrap().posts, 0);

    // A smaller limit from the site is honoured.
    let mut small = config(&dir);
    small.max_body_bytes = 4096;
    let small = App::new(small).await.unwrap();
    let mut browser = Browser::new(&small);
    browser.get("/signup").await;
    let reply = browser
        .submit(
            "/signup",
            &[("username", &"y".repeat(5000)), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn hidden_characters_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut browser = Browser::new(&app);
    browser.get("/signup").await;
    let reply = browser
        .submit(
            "/signup",
            &[("username", "ad\u{200B}min"), ("password", "password123")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("zero-width"), "{}", reply.body);
    let reply = browser
        .api(
            Method::POST,
            "/api/signup",
            None,
            Some(json!({ "username": "\u{202E}nimda", "password": "password123" })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("text-direction"));

    sign_up(&mut browser, "leo", "password123").await;
    for (body, words) in [
        ("bell\u{7}ring", "control character"),
        ("invoice\u{202E}fdp.exe", "text-direction"),
        ("x\u{2067}y", "text-direction"),
        ("pay\u{200D}pal", "zero-width"),
        ("bom\u{FEFF}", "zero-width"),
    ] {
        let reply = browser.submit("/posts", &[("body", body)]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(reply.body.contains(words), "{body:?}: {}", reply.body);
    }
    let reply = browser
        .submit("/posts", &[("body", "two\r\nlines\tand a tab")])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "layout characters stay allowed"
    );
    let me = browser.api(Method::GET, "/api/me", None, None).await.json();
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let request = Request::post("/api/posts")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-csrf-token", csrf)
        .body(Body::from(json!({ "body": "esc\u{1b}[2J" }).to_string()))
        .unwrap();
    let reply = browser.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("control character"));
    assert_eq!(app.db().counts(None).await.unwrap().posts, 1);
}

/// The time one correct login takes, through the form, from `browser`'s address; retried
/// (and counted) while the server answers 503 (hash queue full).
async fn timed_login(
    browser: &mut Browser,
    username: &str,
    password: &str,
) -> (std::time::Duration, u32) {
    browser.cookies.clear();
    browser.csrf = None;
    browser.get("/login").await;
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let reply = try_login(browser, username, password).await;
        match reply.status {
            StatusCode::SEE_OTHER => return (started.elapsed(), tries),
            StatusCode::SERVICE_UNAVAILABLE if tries < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => panic!("the real user's login got {other}: {}", reply.body),
        }
    }
}

fn median(mut times: Vec<std::time::Duration>) -> std::time::Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_user_logs_in_while_16_clients_guess() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&dir).await;
    let mut real = Browser::at(&app, "198.51.100.1");
    sign_up(&mut real, "mona", "the real password").await;

    let mut quiet = Vec::new();
    for _ in 0..5 {
        quiet.push(timed_login(&mut real, "mona", "the real password").await.0);
    }
    let quiet = median(quiet);

    // 16 guessers from one address, then 16 from 16 addresses, each guessing without pause
    // for the whole measurement.
    for (label, spread) in [("one address", false), ("16 addresses", true)] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut guessers = Vec::new();
        for g in 0..16 {
            let ip = if spread {
                format!("203.0.113.{}", 100 + g)
            } else {
                "203.0.113.99".to_owned()
            };
            let mut guesser = Browser::at(&app, &ip);
            let stop = stop.clone();
            guessers.push(tokio::spawn(async move {
                let mut seen: BTreeMap<u16, u32> = BTreeMap::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = try_login(&mut guesser, "mona", &format!("guess {g} {i}")).await;
                    *seen.entry(reply.status.as_u16()).or_default() += 1;
                    i += 1;
                    // A refused guess completes without waiting on anything; yield as a
                    // socket would, or sixteen loops could hold both worker threads.
                    tokio::task::yield_now().await;
                }
                seen
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut times = Vec::new();
        let mut retries = 0;
        for _ in 0..5 {
            let (took, tries) = timed_login(&mut real, "mona", "the real password").await;
            times.push(took);
            retries += tries - 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen: BTreeMap<u16, u32> = BTreeMap::new();
        for guesser in guessers {
            for (status, n) in guesser.await.unwrap() {
                *seen.entry(status).or_default() += n;
            }
        }
        let loaded = median(times.clone());
        println!(
            "real user's login: {quiet:?} quiet, {loaded:?} (median of 5, worst {:?}, {retries} \
             retries after 503) while 16 clients guess from {label}; guessers got {seen:?}",
            times.iter().max().unwrap()
        );
        if !spread {
            // From one address, all but the first ten guesses are refused before hashing.
            // (From 16 addresses each has ten guesses of its own on this account, which
            // the hash queue spreads fairly with the real user's login.)
            assert!(seen.get(&401).is_some_and(|n| *n <= 10), "{seen:?}");
            assert!(seen.get(&429).is_some_and(|n| *n > 0), "{seen:?}");
        }
        assert!(!seen.contains_key(&500), "{seen:?}");
        // Loose: speed is measured in benchmarks, this only catches starvation.
        assert!(loaded < std::time::Duration::from_secs(10), "{loaded:?}");
    }
}
