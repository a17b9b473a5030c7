//! The web dashboard `sluice serve` serves at `/`: static pages built into the binary
//! (`assets/dashboard/`), which read and drive jobs through the job API alone, from the
//! browser. The same pages therefore work over every backend (`--backend aws` too).
//!
//! Everything is served from here (uPlot is vendored, see `assets/dashboard/vendor/`): the
//! machine that serves may have no internet, and the content security policy allows this
//! origin only.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

/// `path → (content type, bytes)`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../assets/dashboard/index.html"),
    ),
    (
        "/assets/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/app.js"),
    ),
    (
        "/assets/dashboard/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/app.css"),
    ),
    (
        "/assets/dashboard/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "/assets/dashboard/vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/vendor/uPlot.min.css"),
    ),
];

/// Only this origin's scripts, styles, images and API; no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The page or asset at `path`, if there is one (a `GET`); anything else is the API's.
pub fn page(path: &str) -> Option<Response> {
    let (_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Body::from(*bytes));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load: a new binary serves new assets at the same paths.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let index = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (path, _, bytes) in &ASSETS[1..] {
            assert!(!bytes.is_empty(), "{path}");
            assert!(index.contains(path), "index.html does not load {path}");
        }
        // Nothing is fetched from anywhere else.
        for (path, _, bytes) in ASSETS {
            let text = String::from_utf8_lossy(bytes);
            if !path.contains("/vendor/") {
                assert!(!text.contains("http://"), "{path} names a remote URL");
                assert!(!text.contains("https://"), "{path} names a remote URL");
            }
        }
        assert!(page("/assets/dashboard/nope.js").is_none());
        let response = page("/").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
    }
}
