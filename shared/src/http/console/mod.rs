//! The console: a web page at `/console` for operators (an admin token) and
//! tenants (an API key with the `usage` scope). Its files are compiled into
//! the binary and served without credentials; everything it shows comes from
//! the API, called with the token in the `Authorization` header (the token is
//! held in the page's memory, never put in a URL). Charts are SVG drawn here
//! ([`chart`], [`svg`]) and served by the API routes in [`views`].

pub mod chart;
pub mod svg;
pub mod views;

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::App;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// What the page may load and where it may connect: its own files and API only.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The page and its files (no credentials: they hold no data).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
}

/// The admin API's console reads, to nest under `/admin/v1` (behind its auth).
pub fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/tenants/{id}/usage/chart", get(views::tenant_chart))
        .route("/tenants/{id}/batches", get(views::tenant_batches))
        .route("/tenants/{id}/alerts", get(views::tenant_alerts))
}
