//! The durable queue's worker: takes due invocations from the store within the limits and
//! hands each to the dispatcher, which runs it and decides its retry.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use crate::store::now_ms;

/// The longest the worker sleeps without looking at the store, so work queued by another
/// process (`jobhost retry`) starts within a second.
const POLL: Duration = Duration::from_secs(1);

/// How many due invocations one look at the store considers.
const BATCH: usize = 256;

/// Runs until `stop`: starts what is due, then sleeps until the next due time, a freed
/// slot, new work, or the poll interval.
pub async fn run(rt: Arc<Runtime>, stop: CancellationToken) {
    loop {
        if let Err(e) = start_due(&rt).await {
            tracing::error!("reading the invocation queue: {e:#}");
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
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn start_due(rt: &Runtime) -> anyhow::Result<()> {
    let functions = rt.functions();
    for due in rt.store.queue.due(now_ms(), BATCH).await? {
        // A function that is not loaded keeps its work queued until it is.
        let Some(function) = functions.functions.get(&due.function) else {
            continue;
        };
        let Ok(permit) = rt.dispatch.admit(function) else {
            continue;
        };
        let owner = rt.dispatch.owner();
        let Some(claimed) = rt.store.queue.claim(&due.id, owner).await? else {
            continue;
        };
        rt.tasks.spawn(
            rt.dispatch
                .clone()
                .run_claimed(function.clone(), claimed, permit),
        );
    }
    Ok(())
}
