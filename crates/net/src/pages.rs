//! The pages a hop shows when it cannot get an answer: short, plain, and carrying
//! the request id so a user's report can be matched to the logs.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use crate::headers::X_REQUEST_ID;
use crate::Body;

/// An HTML error page for `status`, explaining `detail` to a person.
pub fn error_page(
    status: StatusCode,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let rid = request_id.and_then(|v| v.to_str().ok()).unwrap_or("-");
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\n\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222\">\
         <h1>{title}</h1>\n<p>{}</p>\n<p style=\"color:#777;font-size:.85rem\">Request id: {}</p></body></html>\n",
        escape(detail),
        escape(rid)
    );
    let mut resp = Response::new(crate::full(html));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(rid) = request_id {
        headers.insert(X_REQUEST_ID.clone(), rid.clone());
    }
    resp
}

/// `&`, `<`, `>` and both quotes as entities: safe in HTML and XML (SVG) text and
/// in quoted attributes. For what a page shows that came from a request or a site
/// file.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
