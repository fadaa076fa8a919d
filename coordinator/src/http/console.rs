//! The web console: three static files compiled into the binary (no CDN, no build
//! step, nothing fetched at run time), a page of plain JavaScript that reads
//! `/api/v1/` with the caller's credentials and follows the event log live. Served
//! with a Content-Security-Policy that allows only these files, so nothing a release
//! names (a version, a reason, a link) can run as script.

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use super::Api;

const INDEX: &str = include_str!("console/index.html");
const STYLE: &str = include_str!("console/console.css");
const SCRIPT: &str = include_str!("console/console.js");

/// `/`, `/console.css` and `/console.js`.
pub fn router() -> Router<Api> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route("/console.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
}

/// One file with the headers that keep the page to itself.
fn asset(kind: &'static str, body: &'static str) -> Response {
    let policy = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
