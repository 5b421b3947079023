//! `GET /`: the dashboard, one page of plain HTML, CSS and JavaScript embedded in the binary
//! (no build step, nothing fetched from elsewhere). It reads the same API as any client, with
//! the API key pasted into it (kept in the browser's local storage), and polls every second.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard/index.html");

/// The page itself holds no data, so it is served without a key; everything it shows comes
/// from the API, which checks the key the page sends.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "The dashboard", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything from this server; the inline script and styles are the page's own,
            // and it builds its DOM from text, never from markup it received.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}
