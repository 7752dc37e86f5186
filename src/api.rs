//! `/_jobhost/`: the status API of SPEC §7. Functions, invocations with filters, one
//! invocation, manual invoke and retry; a bearer token when the listener is not loopback.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::config::Trigger;
use crate::dispatch::TriggerKind;
use crate::host::Host;
use crate::records::{Filter, STATES};
use crate::registry::Registry;
use crate::triggers::http::{Body, enqueue, full, text};

pub const PREFIX: &str = "/_jobhost/";

/// Largest payload `POST functions/{name}/invoke` takes.
const MAX_INVOKE_BODY: usize = 10 << 20;

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// One function as `GET /_jobhost/functions` shows it.
#[derive(Serialize)]
pub struct FunctionView {
    pub name: String,
    pub status: &'static str,
    pub shape: Option<String>,
    pub module: Option<String>,
    pub triggers: Vec<String>,
    pub error: Option<String>,
}

pub fn function_views(registry: &Registry) -> Vec<FunctionView> {
    let mut out: Vec<FunctionView> = registry
        .functions
        .values()
        .map(|f| FunctionView {
            name: f.spec.name.clone(),
            status: "ready",
            shape: Some(f.prepared.shape.to_string()),
            module: Some(f.spec.module.display().to_string()),
            triggers: f.spec.triggers.iter().map(describe).collect(),
            error: None,
        })
        .collect();
    for problem in &registry.problems {
        // A function whose new version failed still serves its previous one: one entry.
        match out.iter_mut().find(|f| f.name == problem.function) {
            Some(serving) => serving.error = Some(problem.message.clone()),
            None => out.push(FunctionView {
                name: problem.function.clone(),
                status: "error",
                shape: None,
                module: None,
                triggers: Vec::new(),
                error: Some(problem.message.clone()),
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn describe(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Http(h) => {
            let methods = if h.methods.is_empty() {
                "*".to_string()
            } else {
                h.methods.join(",")
            };
            format!(
                "http {methods} {}{}",
                h.route.text,
                if h.mode == crate::config::HttpMode::Async {
                    " (async)"
                } else {
                    ""
                }
            )
        }
        Trigger::Timer(t) => format!("timer {}", t.schedule.key()),
        Trigger::Watch(w) => format!("watch {}", w.folder.display()),
    }
}

/// `None` when the request may use the API, else the answer that refuses it.
fn refusal(host: &Host, req: &Request<Incoming>) -> Option<Response<Body>> {
    if !host.admin_needs_token() {
        return None;
    }
    let Some(token) = host.config.host.admin_token.as_deref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the status API is off: the host listens beyond loopback and has no host.admin_token",
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given.and_then(|v| v.strip_prefix("Bearer ")) == Some(token) {
        None
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin_token>",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

pub async fn handle(host: &Arc<Host>, req: Request<Incoming>) -> Response<Body> {
    if let Some(response) = refusal(host, &req) {
        return response;
    }
    let path = req
        .uri()
        .path()
        .trim_start_matches(PREFIX)
        .trim_end_matches('/')
        .to_string();
    if path.starts_with("invocations") {
        // Read your writes: sync HTTP records are written in batches off the request path.
        let recorder = host.sync_records.clone();
        let _ = tokio::task::spawn_blocking(move || recorder.flush()).await;
    }
    let segments: Vec<&str> = path.split('/').collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["functions"]) => json(StatusCode::OK, &function_views(&host.registry())),
        (Method::POST, ["functions", name, "invoke"]) => {
            let Some(function) = host.registry().functions.get(*name).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no function named `{name}` is loaded"),
                );
            };
            if function.prepared.shape == crate::sandbox::Shape::Http {
                return error(
                    StatusCode::CONFLICT,
                    format!("`{name}` is a wasi:http component: call it over its HTTP route"),
                );
            }
            let body = match Limited::new(req.into_body(), MAX_INVOKE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the payload: {e}"),
                    );
                }
            };
            enqueue(host, &function, TriggerKind::Manual, &body, &[])
        }
        (Method::GET, ["invocations"]) => {
            let filter = match filter(req.uri().query().unwrap_or_default()) {
                Ok(f) => f,
                Err(why) => return error(StatusCode::BAD_REQUEST, why),
            };
            match host.records.list(&filter) {
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        (Method::GET, ["invocations", id]) => match host.records.get(id) {
            Ok(Some(record)) => json(StatusCode::OK, &record),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no invocation {id}")),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (Method::POST, ["invocations", id, "retry"]) => {
            let attempts = host.records.get(id).ok().flatten().and_then(|r| {
                host.registry()
                    .functions
                    .get(&r.function)
                    .map(|f| f.spec.limits.retry.attempts)
            });
            match host.records.retry(id, attempts.unwrap_or(1)) {
                Ok(record) => {
                    host.wake.notify_one();
                    json(StatusCode::ACCEPTED, &record)
                }
                Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no such API: {} {}\n", req.method(), req.uri().path()),
        ),
    }
}

/// `function`, `state`, `trigger` and `limit` (default 100, at most 1000).
pub fn filter(query: &str) -> Result<Filter, String> {
    let mut filter = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.to_string();
        match key {
            "function" => filter.function = Some(value),
            "state" | "status" => {
                if !STATES.contains(&value.as_str()) {
                    return Err(format!(
                        "unknown state {value:?}: use one of {}",
                        STATES.join(", ")
                    ));
                }
                filter.state = Some(value);
            }
            "trigger" => filter.trigger = Some(value),
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("limit {value:?} is not a number"))?;
                filter.limit = Some(n.clamp(1, 1000));
            }
            other => {
                return Err(format!(
                    "unknown filter {other:?}: use function, state, trigger or limit"
                ));
            }
        }
    }
    Ok(filter)
}
