//! Timer triggers: each timer is one task that sleeps until its next occurrence (never
//! waking it early), and records each occurrence with reason `scheduled`, `past_due` or
//! `startup` through the store, which moves the timer's cursor in the same transaction.
//! So a restart neither fires twice nor runs away with past-due runs, and an occurrence
//! that two tasks reach (a reload restarting the timer) fires once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::config::{CatchUp, TimerTrigger, TriggerKind};
use crate::metrics;
use crate::registry::Function;
use crate::store::{Fired, Reason, TimerFire};

/// The key a timer's state is stored under: its function and its schedule, so that an
/// edited schedule is a new timer and never counts as missed runs.
pub fn key(function: &str, timer: &TimerTrigger) -> String {
    format!("{function} {}", timer.schedule.key())
}

/// One timer.
struct Timer {
    context: Context,
    function: Arc<Function>,
    timer: TimerTrigger,
    key: String,
}

/// Runs one timer of `function` until `stop`. `restarted` when a reload restarted a
/// function that was already running: its `run_on_startup` run fired at its first start.
pub async fn run(
    context: Context,
    function: Arc<Function>,
    timer: TimerTrigger,
    stop: CancellationToken,
    restarted: bool,
) {
    let key = key(&function.spec.name, &timer);
    let t = Timer {
        context,
        function,
        timer,
        key,
    };
    let name = t.function.spec.name.clone();
    let schedule = &t.timer.schedule;
    let now = Utc::now();
    let caught_up = t.catch_up(now).await;
    // `run_on_startup` fires once per start, never as a second run beside a catch-up run.
    if t.timer.run_on_startup && !caught_up && !restarted {
        let window = t.context.startup_window;
        match t.context.state.claim_startup(&t.key, window).await {
            Ok(true) => {
                t.fire(now, Reason::Startup, None).await;
            }
            Ok(false) => {
                tracing::info!(function = %name, "run_on_startup: a host sharing the store ran it within the last {window:?}")
            }
            Err(e) => tracing::error!(function = %name, "cannot record the startup run: {e:#}"),
        }
    }
    let upcoming: Vec<String> = schedule
        .upcoming(now, 5)
        .into_iter()
        .map(|t| schedule.format(t))
        .collect();
    tracing::info!(function = %name, timer = %schedule.key(), "next occurrences: {}", upcoming.join(", "));

    let mut cursor = now;
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
        let at = next.timestamp_millis();
        t.fire(next, Reason::Scheduled, Some((at, at))).await;
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

impl Timer {
    /// Compares the last occurrence handled with `now`: runs once for what was missed
    /// while the host was down (or not at all), and moves the cursor to `now`. Returns
    /// whether a catch-up run was queued.
    async fn catch_up(&self, now: DateTime<Utc>) -> bool {
        let name = &self.function.spec.name;
        let schedule = &self.timer.schedule;
        let state = &self.context.state;
        let last = match state.timer_cursor(&self.key).await {
            Ok(last) => last.and_then(DateTime::from_timestamp_millis),
            Err(e) => {
                tracing::error!(function = %name, "reading the timer's state: {e:#}");
                None
            }
        };
        let missed = last.and_then(|last| schedule.next_after(last).filter(|t| *t <= now));
        match (missed, self.timer.catch_up) {
            (Some(first_missed), CatchUp::Once) => {
                tracing::info!(function = %name, "running once for occurrences missed while down, from {}", schedule.format(first_missed));
                let advance = (first_missed.timestamp_millis(), now.timestamp_millis());
                let fired = self
                    .fire(first_missed, Reason::PastDue, Some(advance))
                    .await;
                return matches!(fired, Some(Fired::Queued | Fired::Skipped));
            }
            (Some(_), CatchUp::None) => {
                tracing::info!(function = %name, "skipping occurrences missed while down (catch_up = \"none\")");
            }
            (None, _) => {}
        }
        if let Err(e) = state
            .set_timer_cursor(&self.key, now.timestamp_millis())
            .await
        {
            tracing::error!(timer = %self.key, "storing the timer's state: {e:#}");
        }
        false
    }

    /// Records one run: queued, or skipped while the previous run is still going.
    async fn fire(
        &self,
        at: DateTime<Utc>,
        reason: Reason,
        advance: Option<(i64, i64)>,
    ) -> Option<Fired> {
        let name = &self.function.spec.name;
        let schedule = &self.timer.schedule;
        let scheduled_at = schedule.format(at);
        // Paused: the occurrence passes without a run (nor one to catch up on resume).
        match self.context.state.paused().await {
            Ok(paused) if paused.contains(name) => {
                tracing::info!(function = %name, "occurrence {scheduled_at} passes: the function is paused");
                if let Err(e) = self
                    .context
                    .state
                    .set_timer_cursor(&self.key, at.timestamp_millis())
                    .await
                {
                    tracing::error!(timer = %self.key, "storing the timer's state: {e:#}");
                }
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(function = %name, "reading whether it is paused: {e:#}; the occurrence fires")
            }
        }
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
            "schedule": schedule.key(),
        })
        .to_string();
        if reason == Reason::Scheduled {
            metrics::get().timer_lateness((Utc::now() - at).to_std().unwrap_or_default());
        }
        let dispatch = &self.context.dispatch;
        let mut invocation = dispatch.new_invocation(
            &self.function,
            TriggerKind::Timer,
            reason,
            Bytes::from(event),
            vars,
        );
        invocation.timer = Some(self.key.clone());
        let id = invocation.id.clone();
        let fire = TimerFire {
            key: self.key.clone(),
            advance,
            overlap: self.timer.overlap,
            invocation,
        };
        match self.context.state.fire_timer(fire).await {
            Ok(fired) => {
                match fired {
                    Fired::Queued => dispatch.wake(),
                    Fired::Skipped => {
                        tracing::info!(function = %name, %id, "occurrence {scheduled_at} skipped: the previous run is still going")
                    }
                    Fired::AlreadyFired => {
                        tracing::debug!(function = %name, "occurrence {scheduled_at} was already handled")
                    }
                }
                Some(fired)
            }
            Err(e) => {
                tracing::error!(function = %name, "cannot queue the occurrence {scheduled_at}: {e:#}");
                None
            }
        }
    }
}
