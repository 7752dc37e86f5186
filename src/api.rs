//! `/_jobhost/`: the status API. Functions, invocations with filters, one invocation,
//! counts by state and per minute (`stats`), manual invoke, queue messages, retry and
//! cancel, the hosts sharing the store, and the key-value stores (`kv`); who may call it
//! is `access`'s.

mod access;
mod kv;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::answer::{self, API_PREFIX, Body, error, json};
use crate::body::{self, BodyLimits, Bounded};
use crate::config::{Trigger, TriggerKind};
use crate::dispatch;
use crate::registry::{Function, Registry};
use crate::runtime::Runtime;
use crate::sandbox::Shape;
use crate::store::{
    CancelError, Cancelled, Filter, LATEST, Minute, Reason, RetryError, State, is_unreachable,
    now_ms,
};

/// Largest payload `POST functions/{name}/invoke` takes.
const MAX_INVOKE_BODY: u64 = 10 << 20;

/// One function as `GET /_jobhost/functions` and `jobhost functions` show it.
#[derive(Serialize)]
pub struct FunctionView {
    pub name: String,
    pub status: &'static str,
    pub shape: Option<String>,
    pub module: Option<String>,
    pub triggers: Vec<String>,
    /// The next five runs of its timers, in each schedule's time zone.
    pub upcoming: Vec<String>,
    pub error: Option<String>,
    /// An operator paused its background work (timers and queue).
    pub paused: bool,
}

/// `GET stats`: what the dashboard's overview shows.
#[derive(Serialize)]
struct Overview {
    /// Every record kept, by state.
    states: BTreeMap<String, u64>,
    /// The queue's depth: durable work queued, scheduled or waiting to retry.
    waiting: i64,
    /// Invocations ended per minute, oldest first.
    minutes: Vec<Minute>,
}

pub fn function_views(registry: &Registry, paused: &BTreeSet<String>) -> Vec<FunctionView> {
    let now = Utc::now();
    let mut out: Vec<FunctionView> = registry
        .functions
        .values()
        .map(|f| {
            let mut upcoming: Vec<_> = f
                .spec
                .triggers
                .iter()
                .filter_map(|t| match t {
                    Trigger::Timer(timer) => Some(&timer.schedule),
                    _ => None,
                })
                .flat_map(|s| {
                    s.upcoming(now, 5)
                        .into_iter()
                        .map(move |t| (t, s.format(t)))
                })
                .collect();
            upcoming.sort();
            upcoming.truncate(5);
            FunctionView {
                name: f.spec.name.clone(),
                status: "ready",
                shape: Some(f.prepared.shape.to_string()),
                module: Some(f.spec.module.display().to_string()),
                triggers: f.spec.triggers.iter().map(ToString::to_string).collect(),
                upcoming: upcoming.into_iter().map(|(_, text)| text).collect(),
                error: None,
                paused: paused.contains(&f.spec.name),
            }
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
                upcoming: Vec::new(),
                error: Some(problem.message.clone()),
                paused: paused.contains(&problem.function),
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn handle(rt: &Runtime, req: Request<Incoming>) -> Response<Body> {
    if let Some(response) = access::refusal(&rt.host, req.method(), req.headers()) {
        return response;
    }
    let path = req
        .uri()
        .path()
        .trim_start_matches(API_PREFIX)
        .trim_end_matches('/')
        .to_string();
    if path.starts_with("invocations") || path == "stats" {
        // Read your writes: synchronous records are written in batches off the request path.
        if let Err(e) = rt.store.history.flush().await {
            tracing::error!("writing pending records: {e:#}");
        }
    }
    // A key may end in `/`: the key-value paths keep theirs.
    if let Some(rest) = req
        .uri()
        .path()
        .strip_prefix(API_PREFIX)
        .and_then(|p| p.strip_prefix("kv/"))
    {
        let rest = rest.to_string();
        return kv::handle(rt, &rest, req).await;
    }
    let segments: Vec<&str> = path.split('/').collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["functions"]) => {
            let paused = rt.paused().await;
            json(StatusCode::OK, &function_views(&rt.functions(), &paused))
        }
        (Method::POST, ["functions", name, action @ ("pause" | "resume")]) => {
            pause(rt, name, *action == "pause").await
        }
        (Method::GET, ["hosts"]) => match rt.store.cluster.hosts(rt.host.lease).await {
            Ok(hosts) => json(StatusCode::OK, &hosts),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (Method::POST, ["functions", name, "invoke"]) => {
            let name = name.to_string();
            invoke(rt, &name, req).await
        }
        (Method::POST, ["queues", name]) => {
            let name = name.to_string();
            post_message(rt, &name, req).await
        }
        (Method::GET, ["invocations"]) => {
            let mut filter = match filter(req.uri().query().unwrap_or_default()) {
                Ok(f) => f,
                Err(why) => return error(StatusCode::BAD_REQUEST, why),
            };
            // A list shows excerpts; one invocation's record shows all it keeps.
            filter.excerpt = Some(rt.host.record_excerpt);
            match rt.store.history.list(&filter).await {
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        (Method::GET, ["stats"]) => {
            let minutes = match minutes(param(req.uri().query().unwrap_or_default(), "minutes")) {
                Ok(n) => n,
                Err(why) => return error(StatusCode::BAD_REQUEST, why),
            };
            let stats = rt.store.history.stats(now_ms(), minutes);
            match tokio::try_join!(stats, rt.store.queue.depth()) {
                Ok((stats, depth)) => json(
                    StatusCode::OK,
                    &Overview {
                        states: stats.states,
                        waiting: depth,
                        minutes: stats.minutes,
                    },
                ),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        (Method::GET, ["invocations", id]) => {
            let found = match rt.store.history.get(id).await {
                Ok(Some(mut record)) => rt.store.history.children(id).await.map(|children| {
                    record.children = Some(children);
                    Some(record)
                }),
                other => other,
            };
            match found {
                Ok(Some(record)) => json(StatusCode::OK, &record),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no invocation {id}")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        (Method::POST, ["invocations", "retry"]) => {
            let query = req.uri().query().unwrap_or_default().to_string();
            retry_dead(rt, &query).await
        }
        (Method::POST, ["invocations", id, "retry"]) => match rt.dispatch.retry(id).await {
            Ok(record) => json(StatusCode::ACCEPTED, &record),
            Err(e @ RetryError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
            Err(e @ RetryError::NotDead { .. }) => error(StatusCode::CONFLICT, e.to_string()),
            Err(RetryError::Store(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (Method::POST, ["invocations", id, "cancel"]) => match rt.dispatch.cancel(id).await {
            Ok(Cancelled::Now(record)) => json(StatusCode::OK, &record),
            // Running on another host, which interrupts it when it next looks.
            Ok(Cancelled::Requested(record)) => json(StatusCode::ACCEPTED, &record),
            Err(e @ CancelError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
            Err(e @ CancelError::Ended { .. }) => error(StatusCode::CONFLICT, e.to_string()),
            Err(CancelError::Store(e)) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
            }
        },
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such API: {} {}", req.method(), req.uri().path()),
        ),
    }
}

/// `POST functions/{name}/pause` and `resume`: its timers fire no runs and its queued work
/// waits while it is paused, on every host sharing the store, until resumed.
async fn pause(rt: &Runtime, name: &str, paused: bool) -> Response<Body> {
    let functions = rt.functions();
    let known = functions.functions.contains_key(name)
        || functions.problems.iter().any(|p| p.function == name);
    if !known {
        return error(StatusCode::NOT_FOUND, format!("no function named `{name}`"));
    }
    match rt.set_paused(name, paused).await {
        Ok(changed) => {
            if changed {
                tracing::info!(function = %name, "{}", if paused { "paused" } else { "resumed" });
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "function": name, "paused": paused, "changed": changed }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// The most dead invocations one bulk retry queues again.
const MAX_BULK_RETRY: usize = 10_000;

/// `POST invocations/retry?function=NAME&state=dead`: every dead invocation (of the
/// function, or of all) queued again with a fresh round, at most `MAX_BULK_RETRY` a call.
async fn retry_dead(rt: &Runtime, query: &str) -> Response<Body> {
    let mut function = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("function", name) => function = Some(name.to_string()),
            ("state" | "status", "dead") => {}
            ("state" | "status", other) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "only dead invocations are retried, not {other:?}: give state=dead or leave it out"
                    ),
                );
            }
            (other, _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown filter {other:?}: use function and state=dead"),
                );
            }
        }
    }
    match rt
        .store
        .queue
        .retry_dead(function.as_deref(), MAX_BULK_RETRY)
        .await
    {
        Ok(retried) => {
            if retried > 0 {
                rt.dispatch.wake();
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "retried": retried, "more": retried == MAX_BULK_RETRY }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// `POST functions/{name}/invoke`: a durable manual invocation with the body as payload.
async fn invoke(rt: &Runtime, name: &str, req: Request<Incoming>) -> Response<Body> {
    let Some(function) = rt.functions().functions.get(name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no function named `{name}` is loaded"),
        );
    };
    if function.prepared.shape == Shape::Http {
        return error(
            StatusCode::CONFLICT,
            format!("`{name}` is a wasi:http component: call it over its HTTP route"),
        );
    }
    let what = (TriggerKind::Manual, Reason::Manual, Vec::new());
    submit(rt, &function, what, req).await
}

/// `POST queues/{name}`: a message, one durable invocation of the function that listens.
async fn post_message(rt: &Runtime, queue: &str, req: Request<Incoming>) -> Response<Body> {
    let Some(function) = rt.functions().queues.get(queue).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no loaded function listens on queue `{queue}`: give one triggers = [{{ queue = \"{queue}\" }}]"
            ),
        );
    };
    let vars = vec![("JOBHOST_QUEUE".to_string(), queue.to_string())];
    submit(
        rt,
        &function,
        (TriggerKind::Queue, Reason::Message, vars),
        req,
    )
    .await
}

/// Queues the request's body as a durable invocation of `function`, with the submission's
/// `Idempotency-Key`, `?priority=` and `?delay=`/`?at=`; 202 with its `Location`.
async fn submit(
    rt: &Runtime,
    function: &Arc<Function>,
    (trigger, reason, vars): (TriggerKind, Reason, Vec<(String, String)>),
    req: Request<Incoming>,
) -> Response<Body> {
    let key = match dispatch::idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let callback = match dispatch::callback(req.headers(), &rt.host.callbacks) {
        Ok(callback) => callback,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let query = req.uri().query().unwrap_or_default();
    let when = due_time(param(query, "delay"), param(query, "at"), now_ms());
    let (priority, run_after) = match (priority(param(query, "priority")), when) {
        (Ok(p), Ok(at)) => (p.unwrap_or(function.spec.priority), at),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, why),
    };
    let limits = BodyLimits {
        max_body: MAX_INVOKE_BODY,
        timeout: rt.host.client_timeout,
        stop: rt.accept.clone(),
    };
    let payload = match body::collect(Bounded::new(req.into_body(), limits), &rt.bodies).await {
        Ok((payload, _share)) => payload,
        Err(why) => return error(why.status(), format!("the payload: {why}")),
    };
    let mut new = rt
        .dispatch
        .new_invocation(function, trigger, reason, payload, vars);
    new.priority = priority;
    new.run_after = run_after;
    new.idempotency_key = key;
    if callback.is_some() {
        new.callback = callback;
    }
    match rt.submit(function, new).await {
        Ok((enqueued, state)) => answer::submitted(enqueued, state),
        Err(e) => {
            if !is_unreachable(&e) {
                tracing::error!(function = %function.spec.name, "cannot queue an invocation: {e:#}");
            }
            answer::unavailable(format!("cannot queue the invocation: {e:#}"))
        }
    }
}

/// The value of `key` in a query string, if given (the last one).
fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// When a submission may run (ms), from `?delay=30s` or `?at=<RFC 3339>` (or the CLI's
/// `--delay` and `--at`); `None` for now.
pub fn due_time(delay: Option<&str>, at: Option<&str>, now: i64) -> Result<Option<i64>, String> {
    match (delay, at) {
        (Some(_), Some(_)) => Err("give delay or at, not both".to_string()),
        (Some(delay), None) => {
            let d = humantime::parse_duration(delay).map_err(|e| {
                format!("delay {delay:?} is not a duration ({e}): give one such as 30s, 5m or 2h")
            })?;
            i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now.checked_add(ms))
                .filter(|at| *at <= LATEST)
                .map(Some)
                .ok_or_else(|| format!("delay {delay:?} is too long: it ends after the year 9999"))
        }
        (None, Some(at)) => {
            let t = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
                format!(
                    "at {at:?} is not an RFC 3339 time ({e}): give one such as 2026-12-24T18:00:00Z"
                )
            })?;
            let ms = t.timestamp_millis();
            if ms < now - 60_000 {
                return Err(format!(
                    "at {at:?} is more than a minute in the past: give a time to come, or leave it out to run now"
                ));
            }
            Ok(Some(ms))
        }
        (None, None) => Ok(None),
    }
}

/// `?priority=N` of a submission, if given.
fn priority(value: Option<&str>) -> Result<Option<i32>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| {
        format!("priority {value:?} is not an integer: write ?priority=10 (higher runs first, the function's own is the default)")
    })
}

/// A query-string value as written by a form: percent-decoded, `+` for a space.
fn decoded(value: &str) -> String {
    percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The window of `GET stats`: `?minutes=N`, 60 unless said, one day at most.
fn minutes(value: Option<&str>) -> Result<usize, String> {
    match value.map(str::parse::<usize>) {
        None => Ok(60),
        Some(Ok(n @ 1..=1440)) => Ok(n),
        Some(_) => Err(format!(
            "minutes {:?} is not a number from 1 to 1440: write ?minutes=60",
            value.unwrap_or_default()
        )),
    }
}

/// `function`, `state`, `trigger`, `error` (text in the error), `before` (the last id of
/// the page before) and `limit` (default 100, at most 1000); values percent-encoded.
pub fn filter(query: &str) -> Result<Filter, String> {
    let mut filter = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decoded(value);
        // An empty value (a form's blank field) filters nothing.
        if value.is_empty() && key != "limit" {
            continue;
        }
        match key {
            "function" => filter.function = Some(value),
            "state" | "status" => {
                filter.state = Some(State::parse(&value).ok_or_else(|| {
                    format!("unknown state {value:?}: use one of {}", State::names())
                })?);
            }
            "trigger" => {
                filter.trigger = Some(TriggerKind::parse(&value).ok_or_else(|| {
                    format!(
                        "unknown trigger {value:?}: use one of {}",
                        TriggerKind::names()
                    )
                })?);
            }
            "error" => filter.error = Some(value),
            "before" => filter.before = Some(value),
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("limit {value:?} is not a number"))?;
                filter.limit = Some(n);
            }
            other => {
                return Err(format!(
                    "unknown filter {other:?}: use function, state, trigger, error, before or limit"
                ));
            }
        }
    }
    Ok(filter)
}
