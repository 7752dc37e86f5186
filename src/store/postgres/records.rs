//! The writer of synchronous records on PostgreSQL: they are handed over without waiting
//! and written in batches (one `INSERT ... UNNEST` each) by a task of their own. While the
//! server cannot be reached they wait in memory, up to `MAX_PENDING`, and are written when
//! it is back; what does not fit is dropped and counted (`jobhost_records_dropped_total`).
//! A batch the server refuses for another reason is written again one record at a time,
//! so only a record it refuses alone is dropped (logged with its id, and counted).
//! A batch written twice (its answer lost with the connection) is written once: ids are
//! unique and the insert skips those it finds.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Outage, RETRY_FIRST, RETRY_MAX, lost};
use crate::metrics;
use crate::store::millis;
use crate::store::{State, SyncRecord};

/// What the records writer is handed.
// Nearly every message is a record: boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Write {
    Record(SyncRecord),
    /// Answered once every record handed over before is written, or with why not.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The most records written in one statement.
const BATCH: usize = 512;

/// The most records that wait for a server that cannot be reached (about 40 MiB with
/// excerpts of 4KiB).
const MAX_PENDING: usize = 10_000;

/// Writes records as they come, as many at once as are waiting, until every handle to the
/// store is gone.
pub(super) async fn write(pool: Pool, mut rx: mpsc::UnboundedReceiver<Write>, outage: Arc<Outage>) {
    let mut pending: Vec<SyncRecord> = Vec::new();
    let mut flushed = Vec::new();
    let mut retry = RETRY_FIRST;
    let mut next_try = Instant::now();
    let mut dropped = 0;
    // Whether the buffer filled in this outage (said once).
    let mut full = false;
    loop {
        // Wait for a record, or, with records waiting after a failure, for the next try.
        let message = if pending.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                message = rx.recv() => message,
                _ = tokio::time::sleep_until(next_try) => None,
            }
        };
        let open = message.is_some() || !rx.is_closed();
        let mut next = message;
        while let Some(message) = next {
            match message {
                Write::Record(r) if pending.len() < MAX_PENDING => pending.push(r),
                Write::Record(_) => dropped += 1,
                Write::Flush(done) => flushed.push(done),
            }
            next = rx.try_recv().ok();
        }
        if dropped > 0 {
            metrics::get().records_dropped(dropped);
            if !full {
                tracing::warn!(
                    "{MAX_PENDING} synchronous records wait for the store: more are dropped (counted in jobhost_records_dropped_total) until it is back"
                );
                full = true;
            }
            dropped = 0;
        }
        if !open && pending.is_empty() {
            return;
        }
        if Instant::now() < next_try {
            if open {
                // Still waiting to try again: a reader gets its answer now.
                for done in flushed.drain(..) {
                    let _ = done.send(Err(format!(
                        "{} records wait for the store to come back",
                        pending.len()
                    )));
                }
                continue;
            }
            // The store is being dropped: one last try when it is time.
            tokio::time::sleep_until(next_try).await;
        }
        let writing = pending.len();
        let written = match write_pending(&pool, &mut pending).await {
            Err(e) if !lost(&e) => {
                // Not the connection: the server refused something in the batch. Each
                // record alone, so that only what it refuses is lost, not the batch.
                tracing::warn!(
                    "{} refused a batch of synchronous records ({e:#}): writing them one at a time",
                    outage.store
                );
                write_singly(&pool, &mut pending, &outage.store).await
            }
            other => other,
        };
        match written {
            Ok(()) => {
                // Only a write says the server is back; an empty flush asked it nothing.
                if writing > 0 {
                    outage.over();
                }
                retry = RETRY_FIRST;
                full = false;
                for done in flushed.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            // Only the connection is left to fail here (`write_singly` keeps the rest).
            Err(e) => {
                outage.begin(&e);
                for done in flushed.drain(..) {
                    let _ = done.send(Err(format!("{e:#}")));
                }
                next_try = Instant::now() + retry;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        if !open {
            // The store is gone; what could not be written now is lost with it.
            return;
        }
    }
}

/// Writes what waits, a batch at a time; what is written leaves `pending`.
async fn write_pending(pool: &Pool, pending: &mut Vec<SyncRecord>) -> anyhow::Result<()> {
    while !pending.is_empty() {
        let n = pending.len().min(BATCH);
        insert_sync(pool, &pending[..n]).await?;
        pending.drain(..n);
    }
    Ok(())
}

/// Writes what waits one record at a time, dropping (logged and counted) each one the
/// server refuses; stops at a lost connection, keeping what is not written yet.
async fn write_singly(
    pool: &Pool,
    pending: &mut Vec<SyncRecord>,
    store: &str,
) -> anyhow::Result<()> {
    let mut done = 0;
    let result = loop {
        let Some(record) = pending.get(done) else {
            break Ok(());
        };
        match insert_sync(pool, std::slice::from_ref(record)).await {
            Ok(()) => {}
            Err(e) if lost(&e) => break Err(e),
            Err(e) => {
                tracing::error!(
                    id = %record.id,
                    function = %record.function,
                    "cannot record a synchronous invocation in {store}: {e:#}"
                );
                metrics::get().records_dropped(1);
            }
        }
        done += 1;
    };
    pending.drain(..done);
    result
}

/// Records finished synchronous invocations, all in one statement.
async fn insert_sync(pool: &Pool, batch: &[SyncRecord]) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO jobhost_invocations (id, function, trigger, reason, attempt, max_attempt,
                 state, durable, payload, vars, created_at, run_after, started_at, finished_at,
                 duration_ms, exit_code, error, stdout, stderr, stdout_truncated, stderr_truncated,
                 payload_truncated, owner)
             SELECT id, function, trigger, reason, 1, 1, state, FALSE, payload, '[]', started,
                 started, started, started + duration, duration, exit_code, error, stdout, stderr,
                 stdout_truncated, stderr_truncated, payload_truncated, host
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
                 $7::int8[], $8::int4[], $9::text[], $10::bytea[], $11::bytea[], $12::bool[],
                 $13::bool[], $14::bytea[], $15::bool[], $16::text[])
                 AS t(id, function, trigger, reason, state, started, duration, exit_code, error,
                      stdout, stderr, stdout_truncated, stderr_truncated, payload,
                      payload_truncated, host)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    let column = |f: fn(&SyncRecord) -> &str| batch.iter().map(f).collect::<Vec<_>>();
    let ids = column(|r| &r.id);
    let functions = column(|r| &r.function);
    let triggers = column(|r| r.trigger.as_str());
    let reasons = column(|r| r.reason.as_str());
    let states = column(|r| {
        if r.output.error.is_none() {
            State::Succeeded.as_str()
        } else {
            State::Failed.as_str()
        }
    });
    let started: Vec<i64> = batch.iter().map(|r| r.started_at).collect();
    let durations: Vec<i64> = batch.iter().map(|r| millis(r.output.duration)).collect();
    let exit_codes: Vec<Option<i32>> = batch.iter().map(|r| r.output.exit_code).collect();
    // PostgreSQL text takes no NUL byte; a guest's failure may carry one.
    let errors: Vec<Option<String>> = batch
        .iter()
        .map(|r| r.output.error.as_deref().map(without_nul))
        .collect();
    let stdouts: Vec<&[u8]> = batch.iter().map(|r| r.output.stdout.as_ref()).collect();
    let stderrs: Vec<&[u8]> = batch.iter().map(|r| r.output.stderr.as_ref()).collect();
    let stdout_cut: Vec<bool> = batch.iter().map(|r| r.output.stdout_truncated).collect();
    let stderr_cut: Vec<bool> = batch.iter().map(|r| r.output.stderr_truncated).collect();
    let payloads: Vec<&[u8]> = batch.iter().map(|r| r.payload.as_ref()).collect();
    let payload_cut: Vec<bool> = batch.iter().map(|r| r.payload_truncated).collect();
    let hosts = column(|r| r.host.as_str());
    client
        .execute(
            &stmt,
            &[
                &ids,
                &functions,
                &triggers,
                &reasons,
                &states,
                &started,
                &durations,
                &exit_codes,
                &errors,
                &stdouts,
                &stderrs,
                &stdout_cut,
                &stderr_cut,
                &payloads,
                &payload_cut,
                &hosts,
            ],
        )
        .await?;
    Ok(())
}

/// `text` without NUL bytes, which PostgreSQL's `text` refuses.
pub(super) fn without_nul(text: &str) -> String {
    text.replace('\0', "")
}
