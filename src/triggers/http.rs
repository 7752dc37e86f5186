//! The HTTP trigger: the listener, routing to functions (404, 405, 413), the request as a
//! wasi:http request or as CGI variables and stdin, and the guest's answer as a response.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api;
use crate::config::HttpMode;
use crate::dispatch::{self, Invocation, TriggerKind};
use crate::host::Host;
use crate::metrics;
use crate::records::{NewInvocation, SyncRecord, now_ms};
use crate::registry::{Function, RouteEntry};
use crate::sandbox::{HttpServed, Outcome, Shape};

pub type Body = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The header every answer from a function carries, so a caller can look it up.
pub const INVOCATION_HEADER: &str = "x-jobhost-invocation-id";

/// Accepts connections until `shutdown`, serving each on a tracked task.
pub async fn serve(listener: TcpListener, host: Arc<Host>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_host = host.clone();
        let shutdown = shutdown.clone();
        host.tasks.spawn(async move {
            let service = service_fn(move |req| {
                let host = conn_host.clone();
                async move { Ok::<_, Infallible>(handle(&host, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub async fn handle(host: &Arc<Host>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if path == "/metrics" {
        let queued = host.records.queue_depth().unwrap_or(0);
        let running = host.config.host.max_concurrency - host.permits.available_permits();
        let body = metrics::get().render(queued, running as i64);
        let mut response = text(StatusCode::OK, body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return response;
    }
    if host.accept.is_cancelled() {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is shutting down\n",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    if path.starts_with(api::PREFIX) {
        return api::handle(host, req).await;
    }
    let registry = host.registry();
    let mut matched = registry.routes_for(&path).peekable();
    if matched.peek().is_none() {
        return text(
            StatusCode::NOT_FOUND,
            format!("no function is served at {path}\n"),
        );
    }
    let method = req.method().as_str().to_string();
    let mut allowed: Vec<&str> = Vec::new();
    let mut chosen = None;
    for (entry, params) in matched {
        if entry.methods.is_empty() || entry.methods.contains(&method) {
            chosen = Some((entry, params));
            break;
        }
        allowed.extend(entry.methods.iter().map(String::as_str));
    }
    let Some((entry, params)) = chosen else {
        allowed.sort();
        allowed.dedup();
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed at {path}; use {}\n",
                allowed.join(", ")
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(header::ALLOW, v);
        }
        return response;
    };

    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes (max_body of {})\n",
                entry.max_body, entry.route.text
            ),
        )
    };
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > entry.max_body) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(entry.max_body).unwrap_or(usize::MAX);
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            );
        }
    };

    let function = &entry.function;
    // A wasi:http component sees the request itself; commands see it as CGI variables.
    let vars = match function.prepared.shape {
        Shape::Http => Vec::new(),
        Shape::Command | Shape::Module => cgi_vars(&parts, &body, entry, &params),
    };
    if entry.mode == HttpMode::Async {
        return enqueue(host, function, TriggerKind::Http, &body, &vars);
    }
    let Some(permit) = host.try_permit(function) else {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "`{}` is at its concurrency limit, or the host at max_concurrency ({}); try again\n",
                function.spec.name, host.config.host.max_concurrency
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };

    let invocation = Invocation {
        id: dispatch::new_id(),
        function,
        trigger: TriggerKind::Http,
        attempt: 1,
        vars,
        payload: body.clone(),
        input: None,
    };
    let started_at = now_ms();
    let id = invocation.id.clone();
    let span = invocation.span();
    let mut response = match entry.function.prepared.shape {
        Shape::Http => {
            let mut request = Request::from_parts(parts, Full::new(body));
            if !request.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(&host.config.host.listen.to_string())
            {
                request.headers_mut().insert(header::HOST, v);
            }
            let served = host
                .sandbox
                .serve_http(&entry.function.prepared, request, invocation.run())
                .instrument(span.clone())
                .await;
            match served {
                HttpServed::Responded(response, done) => {
                    // The body may still stream; the outcome is recorded when the guest
                    // ends, and the permit is held until then.
                    let host = host.clone();
                    let id = id.clone();
                    let name = function.spec.name.clone();
                    host.clone().tasks.spawn(
                        async move {
                            if let Ok(outcome) = done.await {
                                dispatch::log_outcome(&name, TriggerKind::Http, &outcome);
                                record_sync(&host, &id, &name, started_at, outcome);
                            }
                            drop(permit);
                        }
                        .instrument(span),
                    );
                    response
                }
                HttpServed::Failed(outcome) => {
                    span.in_scope(|| {
                        dispatch::log_outcome(&function.spec.name, TriggerKind::Http, &outcome)
                    });
                    let response = failed(&id, &outcome);
                    record_sync(host, &id, &function.spec.name, started_at, outcome);
                    response
                }
            }
        }
        Shape::Command | Shape::Module => {
            let outcome = dispatch::run_command(&host.sandbox, &invocation).await;
            drop(permit);
            let response = match &outcome.result {
                Ok(()) => cgi_response(outcome.stdout.clone()),
                Err(_) => failed(&id, &outcome),
            };
            record_sync(host, &id, &function.spec.name, started_at, outcome);
            response
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(INVOCATION_HEADER, v);
    }
    response
}

/// Sync HTTP is recorded but never retried: the caller decides.
fn record_sync(host: &Host, id: &str, function: &str, started_at: i64, outcome: Outcome) {
    host.sync_records.record(SyncRecord {
        id: id.to_string(),
        function: function.to_string(),
        started_at,
        outcome,
    });
}

/// Writes durable work to the store, then answers 202 with where to look it up.
pub fn enqueue(
    host: &Host,
    function: &Function,
    trigger: TriggerKind,
    payload: &[u8],
    vars: &[(String, String)],
) -> Response<Body> {
    let id = dispatch::new_id();
    let new = NewInvocation {
        id: &id,
        function: &function.spec.name,
        trigger: trigger.as_str(),
        reason: trigger.as_str(),
        max_attempt: function.spec.limits.retry.attempts,
        payload,
        vars,
        timer: None,
        input_dir: None,
    };
    if let Err(e) = host.records.enqueue(&new, now_ms()) {
        tracing::error!(function = %function.spec.name, "cannot queue an invocation: {e:#}");
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot queue the invocation: {e:#}\n"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    host.wake.notify_one();
    let location = format!("{}invocations/{id}", api::PREFIX);
    let body = serde_json::json!({ "id": id, "state": "queued", "location": location });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(INVOCATION_HEADER, v);
    }
    response
}

fn failed(id: &str, outcome: &Outcome) -> Response<Body> {
    let reason = outcome
        .result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("invocation {id} failed: {reason}\n"),
    )
}

/// The CGI variables of SPEC §2 for one request.
fn cgi_vars(
    parts: &http::request::Parts,
    body: &Bytes,
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
        ("CONTENT_LENGTH".to_string(), body.len().to_string()),
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
    let mut response = Response::new(full(body));
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
            headers.append(name, HeaderValue::from_str(value).ok()?);
        }
    }
    Some((status, headers, out.slice(head_len + sep_len..)))
}

#[cfg(test)]
mod tests {
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
}
