//! The HTTP trigger: what a function's route does. The request is matched to a route (404,
//! 405) and admitted within the limits (503) before its body is read; then a wasi:http
//! component gets the request with its body streaming in, and a command gets it as CGI
//! variables and its whole body on stdin (read by `body`: 413, 408, or 503 past the budget
//! for bodies in memory). An async route reads the body whole and queues it. The guest's
//! answer becomes the response. Accepting connections is the HTTP front's.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::answer::{self, Body};
use crate::body::{self, BodyLimits, Bounded, Refused};
use crate::config::{HttpMode, TriggerKind};
use crate::dispatch::{self, Call, Echo, Served};
use crate::registry::{Registry, RouteEntry};
use crate::runtime::Runtime;
use crate::sandbox::{Outcome, RequestBodyError, Shape};
use crate::store::{Reason, is_unreachable};

/// Answers a request for a function's route.
pub async fn handle(rt: &Runtime, req: Request<Incoming>) -> Response<Body> {
    let registry = rt.functions();
    let (path, method) = (req.uri().path(), req.method().as_str());
    let (entry, params) = match route(&registry, path, method) {
        Ok(matched) => matched,
        Err(why) => return unrouted(why, path, method),
    };
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > entry.max_body) {
        return refused(
            Refused::Body(RequestBodyError::TooLarge(entry.max_body)),
            entry,
        );
    }
    let (parts, body) = req.into_parts();
    let body = Bounded::new(
        body,
        BodyLimits {
            max_body: entry.max_body,
            timeout: rt.host.client_timeout,
            stop: rt.accept.clone(),
        },
    );
    let function = &entry.function;
    if entry.mode == HttpMode::Async {
        let callback = match dispatch::callback(&parts.headers, &rt.host.callbacks) {
            Ok(callback) => callback,
            Err(why) => return answer::error(StatusCode::BAD_REQUEST, why),
        };
        // Durable: written to the store, so read whole; started here when a slot is free
        // (`Runtime::submit`), else queued.
        let (payload, _share) = match body::collect(body, &rt.bodies).await {
            Ok(read) => read,
            Err(why) => return refused(why, entry),
        };
        let key = match dispatch::idempotency_key(&parts.headers) {
            Ok(key) => key,
            Err(why) => return answer::error(StatusCode::BAD_REQUEST, why),
        };
        let vars = cgi_vars(&parts, payload.len(), entry, &params);
        let mut new =
            rt.dispatch
                .new_invocation(function, TriggerKind::Http, Reason::Http, payload, vars);
        new.idempotency_key = key;
        if callback.is_some() {
            new.callback = callback;
        }
        // Boxed, as is `run_sync` below: held inline, the larger of the two made every
        // request's future (9.8 KB, moved whole into hyper's connection state) more than
        // twice the size the wasi:http path needs (4.1 KB).
        return match Box::pin(rt.submit(function, new)).await {
            Ok((enqueued, state)) => answer::submitted(enqueued, state),
            Err(e) => {
                // A lost store is logged once, by the store.
                if !is_unreachable(&e) {
                    tracing::error!(function = %function.spec.name, "cannot queue an invocation: {e:#}");
                }
                answer::unavailable(format!("cannot queue the invocation: {e:#}"))
            }
        };
    }
    // Admitted before the body is read: a request that cannot run now costs no memory.
    let permit = match rt.dispatch.admit(function) {
        Ok(permit) => permit,
        Err(busy) => return answer::unavailable(busy.to_string()),
    };
    let (id, response) = match function.prepared.shape {
        Shape::Http => {
            // The component sees the request itself and reads the body as it arrives; its
            // record keeps no payload.
            let call = Call {
                function,
                trigger: TriggerKind::Http,
                vars: Vec::new(),
                payload: Bytes::new(),
                echo: Echo::Stderr,
            };
            let mut request = Request::from_parts(parts, body.streamed());
            if !request.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(&rt.host.listen.to_string())
            {
                request.headers_mut().insert(header::HOST, v);
            }
            match rt.dispatch.serve_http(call, request, permit).await {
                (id, Served::Responded(response)) => (id, response),
                (id, Served::Failed(outcome)) => {
                    let response = failed(&id, &outcome);
                    (id, response)
                }
            }
        }
        Shape::Command | Shape::Module => {
            let (payload, share) = match body::collect(body, &rt.bodies).await {
                Ok(read) => read,
                Err(why) => return refused(why, entry),
            };
            let call = Call {
                function,
                trigger: TriggerKind::Http,
                vars: cgi_vars(&parts, payload.len(), entry, &params),
                payload,
                echo: Echo::Stderr,
            };
            let (id, outcome) = Box::pin(rt.dispatch.run_sync(call, permit)).await;
            drop(share);
            let response = match &outcome.result {
                Ok(()) => cgi_response(outcome.stdout),
                Err(_) => failed(&id, &outcome),
            };
            (id, response)
        }
    };
    answer::with_invocation(response, &id)
}

/// The answer to a body that could not be had.
fn refused(why: Refused, entry: &RouteEntry) -> Response<Body> {
    match why.status() {
        StatusCode::SERVICE_UNAVAILABLE => answer::unavailable(why.to_string()),
        status => answer::text(status, format!("{why} (route {})\n", entry.route.text)),
    }
}

/// A route that matched, with its `{param}` values.
type Matched<'a> = (&'a RouteEntry, Vec<(String, String)>);

/// Why no route takes a request.
enum Unrouted {
    /// 404: no route matches the path.
    NotFound,
    /// 405: routes match the path, for these methods only.
    Method(Vec<String>),
}

/// The route for `path` and `method`.
fn route<'a>(registry: &'a Registry, path: &str, method: &str) -> Result<Matched<'a>, Unrouted> {
    let mut allowed: Vec<String> = Vec::new();
    let mut any = false;
    for (entry, params) in registry.routes_for(path) {
        if entry.methods.is_empty() || entry.methods.iter().any(|m| m == method) {
            return Ok((entry, params));
        }
        any = true;
        allowed.extend(entry.methods.iter().cloned());
    }
    if !any {
        return Err(Unrouted::NotFound);
    }
    allowed.sort();
    allowed.dedup();
    Err(Unrouted::Method(allowed))
}

fn unrouted(why: Unrouted, path: &str, method: &str) -> Response<Body> {
    match why {
        Unrouted::NotFound => answer::text(
            StatusCode::NOT_FOUND,
            format!("no function is served at {path}\n"),
        ),
        Unrouted::Method(allowed) => {
            let allowed = allowed.join(", ");
            let mut response = answer::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed at {path}; use {allowed}\n"),
            );
            if let Ok(v) = HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            response
        }
    }
}

/// A failed invocation's answer: 500 with its id and reason.
fn failed(id: &str, outcome: &Outcome) -> Response<Body> {
    let reason = outcome
        .result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    answer::text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("invocation {id} failed: {reason}\n"),
    )
}

/// The CGI variables a command sees for one request.
fn cgi_vars(
    parts: &http::request::Parts,
    length: usize,
    entry: &RouteEntry,
    params: &[(String, String)],
) -> Vec<(String, String)> {
    let header_text = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut vars = vec![
        ("GATEWAY_INTERFACE".to_string(), "CGI/1.1".to_string()),
        ("REQUEST_METHOD".to_string(), parts.method.to_string()),
        ("PATH_INFO".to_string(), parts.uri.path().to_string()),
        (
            "QUERY_STRING".to_string(),
            parts.uri.query().unwrap_or_default().to_string(),
        ),
        (
            "CONTENT_TYPE".to_string(),
            header_text(header::CONTENT_TYPE),
        ),
        ("CONTENT_LENGTH".to_string(), length.to_string()),
        (
            "SERVER_PROTOCOL".to_string(),
            format!("{:?}", parts.version),
        ),
        ("JOBHOST_ROUTE".to_string(), entry.route.text.clone()),
    ];
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            let name = name.as_str().to_ascii_uppercase().replace('-', "_");
            vars.push((format!("HTTP_{name}"), value.to_string()));
        }
    }
    for (name, value) in params {
        vars.push((
            format!("JOBHOST_PARAM_{}", name.to_ascii_uppercase()),
            value.clone(),
        ));
    }
    vars
}

/// A command's stdout as a response: CGI headers (`Status`, `Content-Type`, `Location`, any
/// other) before a blank line are honoured; output that does not start with a header block
/// is all body.
pub fn cgi_response(stdout: Bytes) -> Response<Body> {
    let (status, headers, body) =
        split_cgi(&stdout).unwrap_or((None, HeaderMap::new(), stdout.clone()));
    let mut response = Response::new(answer::full(body));
    let location = headers.contains_key(header::LOCATION);
    *response.headers_mut() = headers;
    *response.status_mut() = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// Headers about the connection and its framing rather than the answer.
const FRAMING: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

fn split_cgi(out: &Bytes) -> Option<(Option<StatusCode>, HeaderMap, Bytes)> {
    let (head_len, sep_len) = [(b"\r\n\r\n".as_slice(), 4), (b"\n\n".as_slice(), 2)]
        .into_iter()
        .filter_map(|(sep, len)| {
            out.windows(sep.len())
                .position(|w| w == sep)
                .map(|p| (p, len))
        })
        .min()?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            status = Some(StatusCode::from_u16(code).ok()?);
        } else {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            // The host owns the framing of its connections: a guest's length (which may lie,
            // or count output cut at `max_output`) or hop-by-hop header never reaches them.
            if !FRAMING.contains(&name) {
                headers.append(name, HeaderValue::from_str(value).ok()?);
            }
        }
    }
    Some((status, headers, out.slice(head_len + sep_len..)))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn check(out: &str, status: u16, content_type: &str, body: &str) {
        let response = cgi_response(Bytes::from(out.to_string()));
        assert_eq!(response.status().as_u16(), status, "{out:?}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            content_type,
            "{out:?}"
        );
        let got = futures_body(response);
        assert_eq!(got, body, "{out:?}");
    }

    fn futures_body(response: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn cgi_headers_set_status_and_headers() {
        check(
            "Status: 201 Created\nContent-Type: application/json\n\n{}",
            201,
            "application/json",
            "{}",
        );
        check(
            "Content-Type: text/html\r\n\r\n<p>",
            200,
            "text/html",
            "<p>",
        );
        check(
            "hello world\n",
            200,
            "text/plain; charset=utf-8",
            "hello world\n",
        );
        check(
            "hello\n\nworld",
            200,
            "text/plain; charset=utf-8",
            "hello\n\nworld",
        );
        check("", 200, "text/plain; charset=utf-8", "");
    }

    #[test]
    fn a_guest_cannot_set_the_framing_of_the_connection() {
        let response = cgi_response(Bytes::from_static(
            b"Content-Length: 999\nTransfer-Encoding: chunked\nConnection: close\nKeep-Alive: 1\nX-Kept: yes\n\nhello",
        ));
        let headers = response.headers();
        for dropped in [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
        ] {
            assert!(!headers.contains_key(dropped), "{dropped}: {headers:?}");
        }
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(futures_body(response), "hello");
    }

    proptest::proptest! {
        /// Any guest output: an answer, never a panic, and never with the guest's framing.
        #[test]
        fn any_command_output_becomes_an_answer_without_framing_headers(
            head in proptest::collection::vec("[A-Za-z-]{1,20}: [ -~]{0,30}", 0..6),
            framing in proptest::option::of("(Content-Length: [0-9]{1,9}|Transfer-Encoding: chunked|Connection: close)"),
            separator in "(\n\n|\r\n\r\n|\n)",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut out = head.join("\n").into_bytes();
            if let Some(f) = &framing {
                out.extend_from_slice(b"\n");
                out.extend_from_slice(f.as_bytes());
            }
            out.extend_from_slice(separator.as_bytes());
            out.extend_from_slice(&body);
            let response = cgi_response(Bytes::from(out));
            for name in FRAMING {
                proptest::prop_assert!(!response.headers().contains_key(&name));
            }
        }
    }
}
