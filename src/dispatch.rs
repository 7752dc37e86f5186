//! An invocation, from a trigger's event to the sandbox's `Outcome`: its id, the
//! environment the guest sees, one tracing span, and the log lines of its result.

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use tracing::Instrument;

use crate::config::DirMount;
use crate::metrics;
use crate::registry::Function;

/// Where a watch trigger's folder appears in the sandbox.
pub const INPUT: &str = "/input";
use crate::sandbox::{Outcome, Run, Sandbox};

/// What fired an invocation (`JOBHOST_TRIGGER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    Http,
    Timer,
    File,
    Manual,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Http => "http",
            TriggerKind::Timer => "timer",
            TriggerKind::File => "file",
            TriggerKind::Manual => "manual",
        }
    }

    /// The kind stored in a record; `None` for a kind this build does not know.
    pub fn parse(text: &str) -> Option<TriggerKind> {
        match text {
            "http" => Some(TriggerKind::Http),
            "timer" => Some(TriggerKind::Timer),
            "file" => Some(TriggerKind::File),
            "manual" => Some(TriggerKind::Manual),
            _ => None,
        }
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An invocation id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One invocation about to run.
pub struct Invocation<'a> {
    pub id: String,
    pub function: &'a Function,
    pub trigger: TriggerKind,
    pub attempt: u32,
    /// Trigger-specific variables (CGI variables for HTTP).
    pub vars: Vec<(String, String)>,
    pub payload: Bytes,
    /// A watched folder, mounted read-only at `/input`.
    pub input: Option<PathBuf>,
}

impl Invocation<'_> {
    /// The environment the guest sees: only what the host sets, never its own.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "JOBHOST_FUNCTION".to_string(),
                self.function.spec.name.clone(),
            ),
            ("JOBHOST_INVOCATION_ID".to_string(), self.id.clone()),
            ("JOBHOST_ATTEMPT".to_string(), self.attempt.to_string()),
            ("JOBHOST_TRIGGER".to_string(), self.trigger.to_string()),
        ];
        env.extend(self.vars.iter().cloned());
        env.extend(
            self.function
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env
    }

    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "invocation",
            function = %self.function.spec.name,
            trigger = %self.trigger,
            id = %self.id
        )
    }

    fn dirs(&self) -> Vec<DirMount> {
        let mut dirs = self.function.spec.dirs.clone();
        if let Some(input) = &self.input {
            dirs.push(DirMount {
                host: input.clone(),
                guest: INPUT.to_string(),
                write: false,
            });
        }
        dirs
    }

    pub fn run(&self) -> Run<'_> {
        Run {
            limits: &self.function.spec.limits,
            env: self.env(),
            stdin: self.payload.clone(),
            dirs: self.dirs(),
            config: self.function.config.clone(),
            program: &self.function.spec.name,
        }
    }
}

/// Runs a command invocation and logs its result.
pub async fn run_command(sandbox: &Sandbox, invocation: &Invocation<'_>) -> Outcome {
    let span = invocation.span();
    async {
        let outcome = sandbox
            .run_command(&invocation.function.prepared, invocation.run())
            .await;
        log_outcome(&invocation.function.spec.name, invocation.trigger, &outcome);
        outcome
    }
    .instrument(span)
    .await
}

/// Counts an outcome and logs it in the current span: stderr lines at ERROR, stdout at INFO when it is
/// not the response body, and one line with the result.
pub fn log_outcome(function: &str, trigger: TriggerKind, outcome: &Outcome) {
    metrics::get().invocation(function, trigger.as_str(), outcome);
    for line in String::from_utf8_lossy(&outcome.stderr).lines() {
        tracing::error!(target: "guest", "{line}");
    }
    if trigger != TriggerKind::Http {
        for line in String::from_utf8_lossy(&outcome.stdout).lines() {
            tracing::info!(target: "guest", "{line}");
        }
    }
    // Whole microseconds, so the log shows 0.682, not 0.6818529999999999.
    let duration_ms = outcome.duration.as_micros() as f64 / 1000.0;
    match &outcome.result {
        Ok(()) => tracing::info!(duration_ms, "succeeded"),
        Err(failure) => tracing::warn!(duration_ms, error = %failure, "failed"),
    }
    if outcome.stdout_truncated || outcome.stderr_truncated {
        tracing::warn!(
            stdout_truncated = outcome.stdout_truncated,
            stderr_truncated = outcome.stderr_truncated,
            "output past `max_output` was dropped"
        );
    }
}
