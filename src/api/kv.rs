//! `/_jobhost/kv/`: operators' view of the key-value stores. `GET kv/STORE?prefix=P` lists
//! keys (a page at a time: `cursor`, `limit`), `GET`, `PUT` and `DELETE kv/STORE/KEY` read,
//! write and delete one value (the key percent-encoded; it may hold `/`).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::answer::{Body, error, full, json};
use crate::body::{self, BodyLimits, Bounded};
use crate::config::check_store_name;
use crate::keyvalue::{self, MAX_LIST, MAX_VALUE, check_key, check_prefix, check_value};
use crate::runtime::Runtime;
use crate::store::KvError;

use super::{decoded, param};

#[derive(Serialize)]
struct Page {
    store: String,
    keys: Vec<String>,
    /// Where the next page starts, when there may be one.
    cursor: Option<u64>,
}

#[derive(Serialize)]
struct Written<'a> {
    store: &'a str,
    key: &'a str,
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// `rest` is the path after `kv/`, still percent-encoded.
pub(super) async fn handle(rt: &Runtime, rest: &str, req: Request<Incoming>) -> Response<Body> {
    let (store, key) = match rest.split_once('/') {
        Some((store, "")) => (store, None),
        Some((store, key)) => (store, Some(key)),
        None => (rest, None),
    };
    if let Err(why) = check_store_name(store) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let key = match key.map(|k| percent_decode_str(k).decode_utf8()) {
        None => None,
        Some(Ok(key)) => Some(key.into_owned()),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "the key is not UTF-8 text"),
    };
    let query = req.uri().query().unwrap_or_default().to_string();
    match (req.method().clone(), key) {
        (Method::GET, None) => list(rt, store, &query).await,
        (method, Some(key)) => {
            if let Err(why) = check_key(&key) {
                return error(StatusCode::BAD_REQUEST, why);
            }
            match method {
                Method::GET => get(rt, store, key).await,
                Method::PUT => put(rt, store, &key, req).await,
                Method::DELETE => delete(rt, store, key).await,
                other => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{other} is not for a key: use GET, PUT or DELETE"),
                ),
            }
        }
        (other, None) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{other} is not for a store: GET lists its keys"),
        ),
    }
}

fn failed(e: &anyhow::Error) -> Response<Body> {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

async fn list(rt: &Runtime, store: &str, query: &str) -> Response<Body> {
    let prefix = param(query, "prefix").map_or_else(String::new, decoded);
    let number = |name: &str, default: u64| -> Result<u64, String> {
        param(query, name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{name} {v:?} is not a whole number"))
        })
    };
    if let Err(why) = check_prefix(&prefix) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let (cursor, limit) = match (number("cursor", 0), number("limit", 1000)) {
        (Ok(c), Ok(l)) => (c, l.clamp(1, MAX_LIST)),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, why),
    };
    match rt.store.kv.keys(store, &prefix, cursor, limit).await {
        Ok(keys) => {
            let next = (keys.len() as u64 == limit).then_some(cursor + limit);
            let page = Page {
                store: store.to_string(),
                keys,
                cursor: next,
            };
            json(StatusCode::OK, &page)
        }
        Err(e) => failed(&e),
    }
}

async fn get(rt: &Runtime, store: &str, key: String) -> Response<Body> {
    match rt.store.kv.get(store, std::slice::from_ref(&key)).await {
        Ok(mut values) => match values.pop().flatten() {
            Some(value) => Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(full(value.into()))
                .expect("a valid response"),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no key {key:?} in store {store:?}"),
            ),
        },
        Err(e) => failed(&e),
    }
}

async fn put(rt: &Runtime, store: &str, key: &str, req: Request<Incoming>) -> Response<Body> {
    let limits = BodyLimits {
        max_body: MAX_VALUE as u64,
        timeout: rt.host.client_timeout,
        stop: rt.accept.clone(),
    };
    let value = match body::collect(Bounded::new(req.into_body(), limits), &rt.bodies).await {
        Ok((value, _share)) => value,
        Err(why) => return error(why.status(), format!("the value: {why}")),
    };
    if let Err(why) = check_value(key, &value) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, why);
    }
    let pairs = [(key.to_string(), value.to_vec())];
    match rt.store.kv.set(store, &pairs, rt.host.max_kv_keys).await {
        Ok(()) => {
            let functions = rt.functions();
            let specs = functions.functions.values().map(|f| &f.spec);
            json(
                StatusCode::OK,
                &Written {
                    store,
                    key,
                    bytes: value.len(),
                    note: keyvalue::undeclared(store, specs),
                },
            )
        }
        Err(KvError::Store(e)) => failed(&e),
        Err(refused) => error(StatusCode::CONFLICT, refused.to_string()),
    }
}

async fn delete(rt: &Runtime, store: &str, key: String) -> Response<Body> {
    match rt.store.kv.delete(store, std::slice::from_ref(&key)).await {
        Ok(0) => error(
            StatusCode::NOT_FOUND,
            format!("no key {key:?} in store {store:?}"),
        ),
        Ok(_) => json(
            StatusCode::OK,
            &serde_json::json!({ "store": store, "key": key, "deleted": true }),
        ),
        Err(e) => failed(&e),
    }
}
