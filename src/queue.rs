//! The durable queue's worker: claims due invocations from the records within
//! `max_concurrency` and each function's `concurrency`, runs them, and stores each result
//! with its retry decision (exponential backoff with jitter, `dead` after the last attempt).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Retry;
use crate::dispatch::{self, Invocation, TriggerKind};
use crate::host::{Host, Permit};
use crate::records::{Claimed, Next, now_ms};
use crate::registry::Function;

/// The longest the worker sleeps without looking at the store, so work queued by another
/// process (`jobhost retry`) starts within a second.
const POLL: Duration = Duration::from_secs(1);

/// Runs until `stop`: starts what is due, then sleeps until the next due time, a freed
/// slot, new work, or the poll interval.
pub async fn run(host: Arc<Host>, stop: CancellationToken) {
    loop {
        if let Err(e) = start_due(&host) {
            tracing::error!("reading the invocation queue: {e:#}");
        }
        let now = now_ms();
        let wait = match host.records.next_due_at() {
            // Still due after starting what could start: it waits for a free slot.
            Ok(Some(at)) if at <= now => POLL,
            Ok(Some(at)) => Duration::from_millis((at - now) as u64).min(POLL),
            _ => POLL,
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = host.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn start_due(host: &Arc<Host>) -> anyhow::Result<()> {
    let registry = host.registry();
    for due in host.records.due(now_ms(), 256)? {
        // A function that is not loaded keeps its work queued until it is.
        let Some(function) = registry.functions.get(&due.function) else {
            continue;
        };
        let Some(permit) = host.try_permit(function) else {
            continue;
        };
        let Some(claimed) = host.records.claim(&due.id)? else {
            continue;
        };
        let host_for_task = host.clone();
        let function = function.clone();
        host.tasks
            .spawn(run_claimed(host_for_task, function, claimed, permit));
    }
    Ok(())
}

async fn run_claimed(host: Arc<Host>, function: Arc<Function>, claimed: Claimed, permit: Permit) {
    let Some(trigger) = TriggerKind::parse(&claimed.trigger) else {
        tracing::error!(id = %claimed.id, "unknown trigger {:?} in the store; leaving it", claimed.trigger);
        return;
    };
    let invocation = Invocation {
        id: claimed.id.clone(),
        function: &function,
        trigger,
        attempt: claimed.attempt,
        vars: claimed.vars,
        payload: Bytes::from(claimed.payload),
        input: claimed.input_dir,
    };
    let span = invocation.span();
    let outcome = tokio::select! {
        outcome = dispatch::run_command(&host.sandbox, &invocation) => outcome,
        _ = host.hard_stop.cancelled() => {
            // Interrupted by shutdown: back to the queue, the attempt not used.
            let _span = span.enter();
            match host.records.requeue_interrupted(&invocation.id) {
                Ok(()) => tracing::warn!("interrupted by shutdown; queued again"),
                Err(e) => tracing::error!("cannot queue the interrupted invocation again: {e:#}"),
            }
            return;
        }
    };
    let next = match &outcome.result {
        Ok(()) => Next::Succeeded,
        Err(_) if claimed.attempt < claimed.max_attempt => {
            let delay = backoff(&function.spec.limits.retry, claimed.attempt, &invocation.id);
            async { tracing::info!(attempt = claimed.attempt, "retrying in {delay:?}") }
                .instrument(span.clone())
                .await;
            Next::RetryAt(now_ms() + delay.as_millis() as i64)
        }
        Err(_) => Next::Dead,
    };
    if let Err(e) = host.records.finish(&invocation.id, &outcome, next) {
        let _span = span.enter();
        tracing::error!("cannot store the result: {e:#}");
    }
    drop(permit);
    host.wake.notify_one();
}

/// The wait before the attempt after `attempt`: `initial * 2^(attempt-1)`, at most `max`,
/// less up to a quarter of it at random so that retries of many invocations spread out
/// while each wait stays longer than the one before.
pub fn backoff(retry: &Retry, attempt: u32, id: &str) -> Duration {
    let exp = retry
        .initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let delay = exp.min(retry.max);
    // Jitter needs no crate: the std hasher is randomly keyed per process.
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one((id, attempt));
    let fraction = (random % 1000) as f64 / 1000.0;
    delay.mul_f64(1.0 - 0.25 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stops_at_max() {
        let retry = Retry {
            attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let mut previous = Duration::ZERO;
        for attempt in 1..=4 {
            let d = backoff(&retry, attempt, "x");
            let full = Duration::from_secs(1 << (attempt - 1));
            assert!(
                d <= full && d >= full.mul_f64(0.75),
                "attempt {attempt}: {d:?}"
            );
            assert!(d > previous);
            previous = d;
        }
        assert!(backoff(&retry, 9, "x") <= Duration::from_secs(10));
    }
}
