//! HTTP answers the host writes itself: text, JSON, `202 Accepted` with where to look the
//! invocation up, and `503` with `Retry-After`. Every part that answers HTTP builds them
//! here, so each answer has one shape.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::store::{Enqueued, State};

pub use crate::sandbox::Body;

/// Where the status API lives, on the same listener as the functions.
pub const API_PREFIX: &str = "/_jobhost/";

/// The header every answer about an invocation carries, so a caller can look it up.
pub const INVOCATION_HEADER: &str = "x-jobhost-invocation-id";

/// How long a client is asked to wait before it tries again, in seconds.
const RETRY_AFTER: &str = "1";

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
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

pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error: `{ "error": message }`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// `503 Service Unavailable` with `Retry-After`: the host cannot take this now (a limit
/// is reached, it is shutting down, the store refused a write), but may soon.
pub fn unavailable(message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    response
}

/// `202 Accepted` for durable work: its id, the state it is in, and where its record is.
pub fn accepted(id: &str, state: State) -> Response<Body> {
    let location = format!("{API_PREFIX}invocations/{id}");
    let body = serde_json::json!({ "id": id, "state": state.as_str(), "location": location });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    with_invocation(response, id)
}

/// The answer to a durable submission: `202` + `Location` for a new invocation, and the
/// same for the one an `Idempotency-Key` already made with the same payload; `409` when the
/// key was used with another payload. `state` is the one the invocation is in.
pub fn submitted(enqueued: Enqueued, state: State) -> Response<Body> {
    match enqueued {
        Enqueued::New(id)
        | Enqueued::Existing {
            id,
            same_payload: true,
        } => accepted(&id, state),
        Enqueued::Existing {
            id,
            same_payload: false,
        } => with_invocation(
            error(
                StatusCode::CONFLICT,
                format!(
                    "this Idempotency-Key was used for invocation {id} with another payload: use a new key for a new job"
                ),
            ),
            &id,
        ),
    }
}

/// Adds the invocation header.
pub fn with_invocation(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(INVOCATION_HEADER, v);
    }
    response
}
