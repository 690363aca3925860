//! `GET /`: the status page, one HTML file with its CSS and JavaScript inline,
//! built into the binary (no CDN, no build step). It is public, as it holds no
//! data: everything it shows comes from `/v1` (with `api.token` when set, which
//! the page asks for and keeps in the tab's session storage only).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::SharedState;

const PAGE: &str = include_str!("page/index.html");

/// Scripts and styles only from the page itself, requests only to this daemon.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<SharedState> {
    Router::new().route("/", get(page))
}

/// The status page (HTML): counts, upstream health, a chart of polls and outcomes,
/// the newest outcomes live, dead deliveries with a redeliver button, and a search.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The status page; its data comes from /v1.", content_type = "text/html", body = String)),
)]
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}
