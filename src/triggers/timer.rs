//! Timer triggers: each timer is one task that sleeps until its next occurrence (never
//! waking it early), and sends each occurrence through the durable queue with reason
//! `scheduled`, `past_due` or `startup`. The last occurrence handled is kept in the store,
//! so a restart neither fires twice nor runs away with past-due runs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{CatchUp, Overlap, TimerTrigger};
use crate::dispatch;
use crate::host::Host;
use crate::records::NewInvocation;
use crate::registry::Function;

/// The key a timer's state is stored under: its function and its schedule, so that an
/// edited schedule is a new timer and never counts as missed runs.
pub fn key(function: &str, timer: &TimerTrigger) -> String {
    format!("{function} {}", timer.schedule.key())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Scheduled,
    PastDue,
    Startup,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Scheduled => "scheduled",
            Reason::PastDue => "past_due",
            Reason::Startup => "startup",
        }
    }
}

pub async fn run(
    host: Arc<Host>,
    function: Arc<Function>,
    timer: TimerTrigger,
    key: String,
    stop: CancellationToken,
) {
    let name = function.spec.name.clone();
    let schedule = &timer.schedule;
    let now = Utc::now();
    let mut cursor = now;
    let mut caught_up = false;
    match host.records.timer_last(&key) {
        Ok(Some(last)) => {
            let last = DateTime::from_timestamp_millis(last).unwrap_or(now);
            if let Some(first_missed) = schedule.next_after(last).filter(|t| *t <= now) {
                match timer.catch_up {
                    CatchUp::Once => {
                        tracing::info!(function = %name, "running once for occurrences missed while down, from {}", schedule.format(first_missed));
                        fire(
                            &host,
                            &function,
                            &timer,
                            &key,
                            first_missed,
                            Reason::PastDue,
                        );
                        caught_up = true;
                    }
                    CatchUp::None => {
                        tracing::info!(function = %name, "skipping occurrences missed while down (catch_up = \"none\")")
                    }
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(function = %name, "reading the timer's state: {e:#}"),
    }
    remember(&host, &key, now);
    // `run_on_startup` never adds a second run to a catch-up run.
    if timer.run_on_startup && !caught_up {
        fire(&host, &function, &timer, &key, now, Reason::Startup);
    }
    let upcoming: Vec<String> = schedule
        .upcoming(now, 5)
        .into_iter()
        .map(|t| schedule.format(t))
        .collect();
    tracing::info!(function = %name, timer = %schedule.key(), "next occurrences: {}", upcoming.join(", "));

    while let Some(next) = schedule.next_after(cursor) {
        // Sleep until the occurrence; a timer wakes no earlier than asked, but the wall
        // clock may have moved, so check again.
        loop {
            let left = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(left) => {}
            }
        }
        fire(&host, &function, &timer, &key, next, Reason::Scheduled);
        remember(&host, &key, next);
        cursor = next;
        // Fell behind by more than an occurrence (a paused machine, a clock jump): go on
        // from now rather than running the missed ones in a burst.
        if schedule
            .next_after(cursor)
            .is_some_and(|t| t < Utc::now() - chrono::Duration::seconds(1))
        {
            tracing::warn!(function = %name, "timer fell behind the clock; skipping to the next occurrence from now");
            cursor = Utc::now();
        }
    }
    tracing::info!(function = %name, timer = %schedule.key(), "timer has no further occurrences");
}

fn remember(host: &Host, key: &str, at: DateTime<Utc>) {
    if let Err(e) = host.records.set_timer_last(key, at.timestamp_millis()) {
        tracing::error!(timer = %key, "storing the timer's state: {e:#}");
    }
}

/// One occurrence: queued, or recorded as skipped when the previous run is still going.
fn fire(
    host: &Host,
    function: &Function,
    timer: &TimerTrigger,
    key: &str,
    at: DateTime<Utc>,
    reason: Reason,
) {
    let scheduled_at = timer.schedule.format(at);
    let past_due = reason == Reason::PastDue;
    let vars = vec![
        ("JOBHOST_SCHEDULED_AT".to_string(), scheduled_at.clone()),
        ("JOBHOST_PAST_DUE".to_string(), past_due.to_string()),
    ];
    let event = serde_json::json!({
        "trigger": "timer",
        "reason": reason.as_str(),
        "scheduled_at": scheduled_at,
        "past_due": past_due,
        "schedule": timer.schedule.key(),
    })
    .to_string();
    if reason == Reason::Scheduled {
        crate::metrics::get().timer_lateness((Utc::now() - at).to_std().unwrap_or_default());
    }
    let id = dispatch::new_id();
    let new = NewInvocation {
        id: &id,
        function: &function.spec.name,
        trigger: "timer",
        reason: reason.as_str(),
        max_attempt: function.spec.limits.retry.attempts,
        payload: event.as_bytes(),
        vars: &vars,
        timer: Some(key),
        input_dir: None,
    };
    let skip = match host.records.timer_active(key) {
        Ok((running, waiting)) => match timer.overlap {
            Overlap::Skip => running || waiting > 0,
            Overlap::Queue => waiting > 0,
        },
        Err(e) => {
            tracing::error!(timer = %key, "reading the timer's runs: {e:#}");
            false
        }
    };
    let result = if skip {
        tracing::info!(function = %function.spec.name, %id, "occurrence {scheduled_at} skipped: the previous run is still going");
        host.records.skipped(&new)
    } else {
        host.records.enqueue(&new, crate::records::now_ms())
    };
    match result {
        Ok(()) => host.wake.notify_one(),
        Err(e) => {
            tracing::error!(function = %function.spec.name, "cannot queue the occurrence {scheduled_at}: {e:#}")
        }
    }
}
