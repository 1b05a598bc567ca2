//! The rack page: one HTML file, its stylesheet and its script (`src/assets/`), compiled into
//! the binary with `include_str!` — no build step, nothing fetched from anywhere but this
//! listener (the Content-Security-Policy says so to the browser: `'self'` only). The page
//! reads `GET /v1/events/stream` ([`crate::event_stream`]) and updates itself. Served at `/`
//! and `/rack` to loopback and operator certificates, like status: a browser with an operator
//! certificate, or `ssh -L 8082:127.0.0.1:8082` to the provisioning host.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("assets/rack.html");
const CSS: &str = include_str!("assets/rack.css");
const JS: &str = include_str!("assets/rack.js");

/// Nothing but this origin; no framing, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`, `GET /rack`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

/// `GET /assets/rack.css`.
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// `GET /assets/rack.js`.
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_assets() {
        for text in [HTML, CSS, JS] {
            // The favicon's SVG names its namespace; nothing is fetched from there.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "no absolute URL");
            assert!(!text.contains("https://"), "no absolute URL");
            assert!(!text.contains("//cdn"), "no CDN");
        }
        assert!(HTML.contains("/assets/rack.js") && HTML.contains("/assets/rack.css"));
        assert!(JS.contains("/v1/events/stream"));
        assert!(
            !JS.contains("innerHTML"),
            "text goes in through textContent"
        );
    }
}
