//! Who may use `/_jobhost/`. On loopback the API needs no token, so it answers only requests
//! addressed to this host (their `Host` is the listen address, `localhost` or a name in
//! `[host] api_hosts`): a web page whose name was rebound to 127.0.0.1 (DNS rebinding)
//! cannot read it. Off loopback, and for a request a local proxy passed on (it has
//! `Forwarded`, `X-Forwarded-For` or `X-Real-IP`), it needs `Authorization: Bearer
//! <admin_token>`. Either way a
//! write that a browser sends from another origin (a form on any page the user visits) is
//! refused.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::answer::{Body, error};
use crate::config::HostSettings;
use crate::outbound::GUEST_FORWARDED;

/// `None` when the request may use the API, else the answer that refuses it.
pub(super) fn refusal(
    host: &HostSettings,
    method: &Method,
    headers: &HeaderMap,
) -> Option<http::Response<Body>> {
    let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && let Some(why) = cross_origin(headers) {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!("{why}: the API takes writes from its own origin, curl or the CLI only"),
        ));
    }
    if host.listen.ip().is_loopback() && !proxied(headers) {
        return match addressed_here(host, headers) {
            Ok(()) => None,
            Err(given) => Some(error(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {given:?} is not this host: call the API as localhost:{} or {}, or add the name to [host] api_hosts",
                    host.listen.port(),
                    host.listen
                ),
            )),
        };
    }
    let Some(token) = host.admin_token.as_deref() else {
        let guest = headers
            .get(header::FORWARDED)
            .is_some_and(|v| v.as_bytes() == GUEST_FORWARDED.as_bytes());
        let why = if guest {
            "a guest's outbound request: the status API is not open to guests (without host.admin_token, to none)"
        } else if host.listen.ip().is_loopback() {
            "the request came through a proxy (it has Forwarded, X-Forwarded-For or X-Real-IP) and the host has no host.admin_token: set one to use the API through a proxy"
        } else {
            "the status API is off: the host listens beyond loopback and has no host.admin_token"
        };
        return Some(error(StatusCode::FORBIDDEN, why));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <admin_token>",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Whether a proxy on this machine passed the request on (it says whom for): such a request
/// may come from anywhere, so loopback does not vouch for it and it needs the token.
fn proxied(headers: &HeaderMap) -> bool {
    headers.contains_key(header::FORWARDED)
        || headers.contains_key("x-forwarded-for")
        || headers.contains_key("x-real-ip")
}

/// Why a request comes from another origin than the API's own, if it does: a browser says
/// so in `Sec-Fetch-Site`, or in an `Origin` that is not the `Host` it sends to.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("a {site} request"));
    }
    let origin = text(header::ORIGIN)?;
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    match text(header::HOST) {
        Some(host) if host.eq_ignore_ascii_case(authority) => None,
        _ => Some(format!("a request from {origin}")),
    }
}

/// Whether the request's `Host` names this host. A request without one is not a
/// browser's (browsers always send it), so it passes.
fn addressed_here(host: &HostSettings, headers: &HeaderMap) -> Result<(), String> {
    let Some(given) = headers.get(header::HOST) else {
        return Ok(());
    };
    let given = given.to_str().map_err(|_| "(not text)".to_string())?;
    let Ok(authority) = given.parse::<http::uri::Authority>() else {
        return Err(given.to_string());
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let known = ["localhost", "127.0.0.1", "::1"].contains(&name.as_str())
        || name == host.listen.ip().to_string()
        || host.api_hosts.contains(&name);
    let port = authority.port_u16().is_none_or(|p| p == host.listen.port());
    if known && port {
        Ok(())
    } else {
        Err(given.to_string())
    }
}

/// Compares a given token with the configured one in time that does not depend on where
/// they differ, so the token cannot be guessed byte by byte from answer times. Ten lines;
/// no crate needed.
fn same(given: &[u8], token: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != token.len());
    for (i, t) in token.iter().enumerate() {
        diff |= t ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: &str, token: Option<&str>) -> HostSettings {
        let mut host = crate::config::load(std::path::Path::new("/nonexistent/runtime.toml"))
            .expect("defaults")
            .host;
        host.listen = listen.parse().unwrap();
        host.admin_token = token.map(str::to_string);
        host.api_hosts = vec!["jobs.internal".to_string()];
        host
    }

    fn status(host: &HostSettings, method: Method, headers: &[(&str, &str)]) -> u16 {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        refusal(host, &method, &map).map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn on_loopback_the_api_answers_only_requests_addressed_to_this_host() {
        let host = settings("127.0.0.1:8080", None);
        let cases = [
            (vec![], 200),
            (vec![("host", "localhost:8080")], 200),
            (vec![("host", "127.0.0.1:8080")], 200),
            (vec![("host", "[::1]:8080")], 200),
            (vec![("host", "LOCALHOST")], 200),
            (vec![("host", "jobs.internal:8080")], 200),
            (vec![("host", "evil.example:8080")], 403),
            (vec![("host", "localhost:9999")], 403),
            (vec![("host", "127.0.0.1.nip.io:8080")], 403),
        ];
        for (headers, want) in cases {
            assert_eq!(status(&host, Method::GET, &headers), want, "{headers:?}");
        }
    }

    #[test]
    fn on_loopback_a_request_passed_on_by_a_proxy_needs_the_token() {
        let open = settings("127.0.0.1:8080", Some("s3cret"));
        for proxy in ["forwarded", "x-forwarded-for", "x-real-ip"] {
            let from = [("host", "localhost:8080"), (proxy, "203.0.113.9")];
            assert_eq!(status(&open, Method::GET, &from), 401, "{proxy}");
            let with = [from[0], from[1], ("authorization", "Bearer s3cret")];
            assert_eq!(status(&open, Method::GET, &with), 200, "{proxy}");
        }
        let closed = settings("127.0.0.1:8080", None);
        let from = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(status(&closed, Method::GET, &from), 403);
    }

    #[test]
    fn writes_from_another_origin_are_refused() {
        let host = settings("127.0.0.1:8080", None);
        let here = ("host", "localhost:8080");
        let cases = [
            (Method::POST, vec![here], 200),
            (
                Method::POST,
                vec![here, ("origin", "http://localhost:8080")],
                200,
            ),
            (
                Method::POST,
                vec![here, ("origin", "http://evil.example")],
                403,
            ),
            (Method::POST, vec![here, ("origin", "null")], 403),
            (
                Method::POST,
                vec![here, ("sec-fetch-site", "cross-site")],
                403,
            ),
            (
                Method::POST,
                vec![here, ("sec-fetch-site", "same-origin")],
                200,
            ),
            (
                Method::GET,
                vec![here, ("origin", "http://evil.example")],
                200,
            ),
        ];
        for (method, headers, want) in cases {
            assert_eq!(
                status(&host, method.clone(), &headers),
                want,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn off_loopback_the_token_is_required_in_any_case_of_bearer() {
        let host = settings("0.0.0.0:8080", Some("s3cret"));
        let cases = [
            ("Bearer s3cret", 200),
            ("bearer s3cret", 200),
            ("BEARER s3cret", 200),
            ("Bearer s3cre", 401),
            ("Bearer s3cretx", 401),
            ("Basic s3cret", 401),
            ("s3cret", 401),
        ];
        for (authorization, want) in cases {
            let headers = [("authorization", authorization)];
            assert_eq!(
                status(&host, Method::GET, &headers),
                want,
                "{authorization}"
            );
        }
        assert_eq!(status(&host, Method::GET, &[]), 401);
        let closed = settings("0.0.0.0:8080", None);
        assert_eq!(
            status(&closed, Method::GET, &[("authorization", "Bearer x")]),
            403
        );
    }
}
