//! `/_jobhost/ui/`: the dashboard, a page in the binary itself (plain HTML, CSS and one
//! script, `include_str!`'d from `src/ui/`; no build step, nothing fetched from elsewhere).
//! The page holds no data: it reads the status API from the browser, so the files are
//! served to anyone and the API's token rule guards what they show. A strict
//! Content-Security-Policy lets the page run only its own script.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::answer::{self, Body};

/// Where the page lives.
pub const UI_PREFIX: &str = "/_jobhost/ui";

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only this page's own files, no inline script or style, no framing, no forms posted
/// anywhere (the script sends what the forms hold), API calls to this origin only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers `GET` (or `HEAD`) of the page and its two files.
pub fn handle(method: &Method, path: &str) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{UI_PREFIX}/ is a page to GET; its writes go through the API"),
        );
    }
    let (body, kind) = match path.strip_prefix(UI_PREFIX).unwrap_or(path) {
        // Relative links (app.js, app.css) need the folder's trailing slash.
        "" => {
            let mut moved = answer::text(StatusCode::MOVED_PERMANENTLY, "");
            moved
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/_jobhost/ui/"));
            return moved;
        }
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/app.css" => (STYLE, "text/css; charset=utf-8"),
        other => {
            return answer::error(
                StatusCode::NOT_FOUND,
                format!("the dashboard has no file {other:?}: open {UI_PREFIX}/"),
            );
        }
    };
    let mut response = Response::new(answer::full(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A new jobhost serves a new page: the browser asks again each time.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_carry_a_strict_policy_and_nothing_inline() {
        for path in [
            "/_jobhost/ui/",
            "/_jobhost/ui/app.js",
            "/_jobhost/ui/app.css",
        ] {
            let response = handle(&Method::GET, path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(policy.contains("script-src 'self';"), "{policy}");
            assert!(!policy.contains("unsafe"), "{policy}");
        }
        // No inline script, style or handler the policy would have to allow.
        let lower = INDEX.to_ascii_lowercase();
        assert!(!lower.contains("<script>") && !lower.contains("<style"));
        assert!(!lower.contains(" onclick=") && !lower.contains(" style="));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
        assert_eq!(handle(&Method::GET, "/_jobhost/ui").status(), 301);
        assert_eq!(handle(&Method::POST, "/_jobhost/ui/").status(), 405);
        assert_eq!(handle(&Method::GET, "/_jobhost/ui/x.js").status(), 404);
    }
}
