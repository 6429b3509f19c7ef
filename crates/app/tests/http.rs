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

/// A browser: remembers cookies between requests.
struct Browser {
    router: Router,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(app: &App) -> Self {
        Browser {
            router: app.router(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    async fn send(&mut self, mut request: Request<Body>) -> Reply {
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
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
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

    /// A form post carrying the CSRF cookie's value, as the real pages do.
    async fn submit(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let csrf = self.cookie("csrf").expect("visit a page first").to_owned();
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

async fn app(dir: &tempfile::TempDir) -> App {
    App::new(AppConfig {
        db: db::Config::Sqlite {
            path: dir.path().join("foobar.sqlite"),
        },
        site_name: "foobar".to_owned(),
        secure_cookies: false,
    })
    .await
    .unwrap()
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
    let reply = browser.submit("/posts", &[("body", "   ")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Logged out, posting asks to log in.
    let mut stranger = Browser::new(&app);
    stranger.get("/").await;
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

    let csrf = browser.cookie("csrf").unwrap().to_owned();
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
            Some(json!({ "username": "x", "password": "password123" })),
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
    assert!(app::ASSETS.iter().all(|(_, bytes)| !bytes.is_empty()));
}
