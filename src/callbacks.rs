//! Completion callbacks: once an invocation submitted with one ends (`succeeded`, `dead`,
//! `cancelled`), its record is POSTed as JSON to the callback's URL, signed with
//! `[host] callback_secret`, and retried with backoff until the receiver answers 2xx or
//! `callback_retry`'s attempts run out. What is due lives in the store, so a delivery
//! survives a crash (and is then made again: at least once, never lost).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{CallbackSettings, OutboundSettings, Retry, permit};
use crate::outbound::{Client, shown};
use crate::sandbox::{OutboundError, Timeouts};
use crate::store::{CallbackTry, DueCallback, Store, is_unreachable, now_ms};

/// How often the store is asked for due callbacks.
const POLL: Duration = Duration::from_millis(250);
/// Callbacks claimed at once.
const BATCH: usize = 32;
/// The most of a receiver's answer read (and kept, cut, as `last_error`).
const MAX_ANSWER: usize = 1 << 10;

/// The signature of `body` sent at `timestamp` (unix seconds): the hex HMAC-SHA256 of
/// `"<timestamp>.<body>"` under `secret`, as `X-Jobhost-Signature` carries it after
/// `sha256=`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When try number `tries` failed now, when to try again; `None` once they have run out.
fn next_try(retry: &Retry, tries: u32, now: i64) -> Option<i64> {
    if tries >= retry.attempts {
        return None;
    }
    let factor = 2u32.saturating_pow(tries.saturating_sub(1));
    let wait = retry.initial.saturating_mul(factor).min(retry.max);
    Some(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
}

/// Delivers due callbacks until `stop`.
pub async fn run(
    store: Store,
    client: Arc<Client>,
    settings: CallbackSettings,
    outbound: OutboundSettings,
    stop: CancellationToken,
) {
    if settings.secret.is_none() {
        // Nothing could be signed: another host sharing the store (with a secret) delivers.
        tracing::debug!("no [host] callback_secret: this host delivers no callbacks");
        return;
    }
    // A try takes at most `limit`, and is held longer: past the hold (its host died
    // mid-try), another claim tries again.
    let limit = outbound.connect_timeout + outbound.timeout + Duration::from_secs(5);
    let hold = limit + Duration::from_secs(10);
    let settings = Arc::new(settings);
    let mut tries = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        while tries.try_join_next().is_some() {}
        // At most BATCH tries at once, however long receivers take.
        let room = BATCH.saturating_sub(tries.len());
        if room == 0 {
            continue;
        }
        let due = match store.callbacks.claim_callbacks(room, hold).await {
            Ok(due) => due,
            Err(e) => {
                if !is_unreachable(&e) {
                    tracing::error!("cannot look for due callbacks: {e:#}");
                }
                continue;
            }
        };
        for callback in due {
            let (store, client, settings) = (store.clone(), client.clone(), settings.clone());
            tries.spawn(async move { deliver(&store, &client, &settings, callback, limit).await });
        }
    }
}

/// One try of one callback, and what it came to, stored.
async fn deliver(
    store: &Store,
    client: &Client,
    settings: &CallbackSettings,
    due: DueCallback,
    limit: Duration,
) {
    let tried = tokio::time::timeout(limit, attempt(store, client, settings, &due))
        .await
        .unwrap_or_else(|_| Err((None, format!("no answer within {limit:?}"))));
    let shown = shown(&due.url);
    let tried = match tried {
        Ok(status) => {
            tracing::info!(id = %due.id, "callback delivered to {shown} (try {})", due.attempts);
            CallbackTry {
                delivered: true,
                status: Some(status),
                error: None,
                retry_at: None,
            }
        }
        Err((status, why)) => {
            let retry_at = next_try(&settings.retry, due.attempts, now_ms());
            let then = match retry_at {
                Some(_) => "it is tried again",
                None => "no attempts are left: it has failed",
            };
            tracing::warn!(id = %due.id, "callback to {shown} failed (try {}): {why}; {then}", due.attempts);
            CallbackTry {
                delivered: false,
                status,
                error: Some(why),
                retry_at,
            }
        }
    };
    if let Err(e) = store.callbacks.callback_tried(&due, tried).await {
        tracing::error!(id = %due.id, "cannot store what became of a callback: {e:#}; it is tried again");
    }
}

/// POSTs the record: the status of a 2xx answer, or the status (if any) and why it did
/// not count as delivered.
async fn attempt(
    store: &Store,
    client: &Client,
    settings: &CallbackSettings,
    due: &DueCallback,
) -> Result<u16, (Option<u16>, String)> {
    let record = match store.history.get(&due.id).await {
        Ok(Some(record)) if record.state.has_ended() => record,
        Ok(Some(_)) => return Err((None, "it runs again (retried): not sent".to_string())),
        Ok(None) => return Err((None, "the record is gone (pruned)".to_string())),
        Err(e) => return Err((None, format!("cannot read the record: {e:#}"))),
    };
    let body = serde_json::to_vec(&record).map_err(|e| (None, e.to_string()))?;
    let secret = settings.secret.as_deref().unwrap_or_default();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let uri: http::Uri = due
        .url
        .parse()
        .map_err(|e| (None, format!("not a URL: {e}")))?;
    let permit = permit(
        &settings.allowed,
        uri.scheme_str().unwrap_or_default(),
        uri.host().unwrap_or_default(),
        uri.port_u16(),
    );
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "jobhost")
        .header("x-jobhost-timestamp", timestamp.to_string())
        .header(
            "x-jobhost-signature",
            format!("sha256={}", signature(secret, timestamp, &body)),
        )
        .header("x-jobhost-invocation-id", &due.id)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| (None, e.to_string()))?;
    let response = client
        .send(request, permit, Timeouts::default())
        .await
        .map_err(|e| {
            let why = match e {
                OutboundError::Denied(_) => {
                    "not in [host] allowed_callback_hosts (any more)".to_string()
                }
                other => other.to_string(),
            };
            (None, why)
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    // Read a little of the answer, for the record.
    let mut answer = Vec::new();
    let mut body = response.into_body();
    while answer.len() < MAX_ANSWER {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    answer.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    answer.truncate(MAX_ANSWER);
    let text = String::from_utf8_lossy(&answer);
    let text = text.trim();
    Err((
        Some(status.as_u16()),
        if text.is_empty() {
            format!("answered {status}")
        } else {
            format!("answered {status}: {text}")
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // What a receiver computes (Python: hmac.new(b"key", b'1700000000.{"id":"x"}',
        // hashlib.sha256).hexdigest()).
        assert_eq!(
            signature("key", 1_700_000_000, b"{\"id\":\"x\"}"),
            "c275209bfed50f54f9b0d8dafaf250f3f08155fdaadece7fc4d3f5c7e3c8b6ba"
        );
    }

    #[test]
    fn callback_retries_back_off_and_run_out() {
        let retry = Retry {
            attempts: 4,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3),
        };
        assert_eq!(next_try(&retry, 1, 0), Some(1000));
        assert_eq!(next_try(&retry, 2, 0), Some(2000));
        assert_eq!(next_try(&retry, 3, 0), Some(3000), "capped at max");
        assert_eq!(next_try(&retry, 4, 0), None, "the attempts ran out");
    }
}
