//! The durable queue's worker: takes due invocations from the store within the limits (and
//! not those of paused functions) and hands each to the dispatcher, which runs it and
//! decides its retry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::runtime::Runtime;
use crate::store::{Slots, Wanted, is_unreachable, now_ms};

/// The longest the worker sleeps without looking at the store, so work queued by another
/// process (`jobhost retry`, another host) starts within a second even without a hint.
const POLL: Duration = Duration::from_secs(1);

/// How often, at most, the worker looks for cancels of what runs here.
const CANCELS: Duration = Duration::from_millis(250);

/// The most invocations one look at the store claims.
const BATCH: usize = 256;

/// Runs until `stop`: starts what is due, then sleeps until the next due time, a freed
/// slot, new work, or the poll interval.
pub async fn run(rt: Arc<Runtime>, stop: CancellationToken) {
    let hint = rt.store.queue.work_hint();
    let mut cancels_seen = std::time::Instant::now();
    loop {
        let paused = rt.paused().await;
        match start_due(&rt, &paused).await {
            Ok(wanted) => rt.dispatch.slots_wanted(wanted),
            Err(e) => {
                rt.dispatch.slots_wanted(true);
                // A lost store is logged once, by the store.
                if !is_unreachable(&e) {
                    tracing::error!("reading the invocation queue: {e:#}");
                }
            }
        }
        // Cancels made through another host or the CLI; at most a few looks a second, as
        // the worker may wake for every run that ends.
        if cancels_seen.elapsed() >= CANCELS {
            cancels_seen = std::time::Instant::now();
            if let Err(e) = rt.dispatch.interrupt_cancelled().await
                && !is_unreachable(&e)
            {
                tracing::error!("reading cancels: {e:#}");
            }
        }
        let now = now_ms();
        let wait = match rt.store.queue.next_due_at().await {
            // Still due after starting what could start: it waits for a free slot.
            Ok(Some(at)) if at <= now => POLL,
            Ok(Some(at)) => Duration::from_millis((at - now) as u64).min(POLL),
            _ => POLL,
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = rt.dispatch.woken() => {}
            _ = hinted(hint.as_deref()) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Resolves when the store hints at new work; never without a hint.
async fn hinted(hint: Option<&Notify>) {
    match hint {
        Some(hint) => hint.notified().await,
        None => std::future::pending().await,
    }
}

/// Claims and starts what is due and fits; whether work may be left waiting for a slot
/// (no slot was free, or it found work: there may be more).
async fn start_due(rt: &Runtime, paused: &BTreeSet<String>) -> anyhow::Result<bool> {
    let functions = rt.functions();
    let free = rt.dispatch.free_slots();
    if free == 0 {
        return Ok(true);
    }
    // What this host can run now; a function that is not loaded keeps its work queued
    // until it is (here or on another host).
    let mut wanted = Wanted {
        limit: free.min(BATCH),
        functions: functions
            .functions
            .values()
            .map(|f| Slots {
                function: f.spec.name.clone(),
                here: f
                    .permits
                    .as_ref()
                    .map_or(free, |p| p.available_permits().min(free)),
                everywhere: f.spec.concurrency,
                timers: f.spec.has_timer(),
            })
            .collect(),
    };
    // A paused function's work waits in the queue until it is resumed (which wakes this
    // worker); one with no room here waits for a run of its own to end (which always
    // wakes it, see `Dispatcher::run_claimed`).
    wanted
        .functions
        .retain(|s| s.here > 0 && !paused.contains(&s.function));
    if wanted.functions.is_empty() {
        return Ok(false);
    }
    let owner = rt.dispatch.owner();
    let started = std::time::Instant::now();
    let claimed = rt.store.queue.claim_due(owner, &wanted).await?;
    metrics::get().claim(started.elapsed());
    let found = !claimed.is_empty();
    for claimed in claimed {
        let admitted = functions
            .functions
            .get(&claimed.function)
            .map(|f| (f, rt.dispatch.admit(f)));
        match admitted {
            Some((function, Ok(permit))) => {
                rt.tasks.spawn(
                    rt.dispatch
                        .clone()
                        .run_claimed(function.clone(), claimed, permit),
                );
            }
            // A synchronous request took the slot since it was counted: the invocation
            // goes back to the queue with its attempt, for the next look.
            _ => {
                // Not `?`: the rest of this batch is claimed too and must still start.
                if let Err(e) = rt.store.queue.release(&claimed.lease).await {
                    tracing::error!(id = %claimed.lease.id, "cannot put a claimed invocation back in the queue: {e:#}; it goes back after the lease");
                }
            }
        }
    }
    Ok(found)
}
