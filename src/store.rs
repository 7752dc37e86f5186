//! The store behind traits, by who uses it: [`Queue`] (durable work: enqueue, claim under a
//! fenced lease, finish, retry), [`TriggerState`] (timer cursors and watch receipts, each
//! changed together with the invocation it fires), [`History`] (the records the API and
//! the CLI show, pruning) and [`Cluster`] (hosts sharing the store: heartbeats, the rescue
//! of a silent one's work). `sqlite` is the embedded implementation, `postgres` the one
//! several hosts share; both pass the same conformance suite (`conformance`).
//!
//! Named `store` for the invocation store; the sandbox's per-invocation `wasmtime::Store`
//! never leaves `sandbox`.

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::config::{HostSettings, Overlap, StoreSettings, TriggerKind};

/// Milliseconds since the Unix epoch: every time in the store.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time in the store as RFC 3339, as the API and the CLI show it.
pub fn rfc3339(ms: i64) -> String {
    // RFC 3339 has four-digit years: a later time is shown as the last it can say.
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, LATEST) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// 9999-12-31T23:59:59.999Z in ms: the latest time the store takes.
pub const LATEST: i64 = 253_402_300_799_999;

/// Which host a claim belongs to; kept in `data/host-id` so it survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostId(pub Arc<str>);

impl HostId {
    /// The id in `data_dir`, made on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<HostId> {
        let path = data_dir.join("host-id");
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(HostId(id.trim().into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
        let id = uuid::Uuid::now_v7().to_string();
        std::fs::write(&path, format!("{id}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(HostId(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an invocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    /// Failed; a retry is scheduled (durable), or the caller decides (sync).
    Failed,
    /// Failed with every attempt used.
    Dead,
    /// A timer occurrence that came while the previous run was still going.
    Skipped,
    /// Delayed: queued to run at a later time.
    Scheduled,
    /// Cancelled by a user before it ended: never run again.
    Cancelled,
}

/// Why an invocation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Http,
    Scheduled,
    PastDue,
    Startup,
    File,
    Manual,
    Retry,
    /// A message posted to the function's queue.
    Message,
    /// The parent succeeded (its `on_success`).
    OnSuccess,
    /// The parent is dead (its `on_failure`).
    OnFailure,
    /// Another invocation's guest queued it (`jobhost:job` `enqueue`).
    Enqueue,
}

impl State {
    /// Durable work waiting to run: queued, scheduled for later, or failed and awaiting a
    /// retry.
    pub fn is_waiting(self) -> bool {
        matches!(self, State::Queued | State::Failed | State::Scheduled)
    }

    /// Ended for good (unless a user retries it): what a completion callback reports.
    pub fn has_ended(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }
}

named!(State {
    Queued = "queued",
    Running = "running",
    Succeeded = "succeeded",
    Failed = "failed",
    Dead = "dead",
    Skipped = "skipped",
    Scheduled = "scheduled",
    Cancelled = "cancelled",
});

named!(Reason {
    Http = "http",
    Scheduled = "scheduled",
    PastDue = "past_due",
    Startup = "startup",
    File = "file",
    Manual = "manual",
    Retry = "retry",
    Message = "message",
    OnSuccess = "on_success",
    OnFailure = "on_failure",
    Enqueue = "enqueue",
});

/// Durable work to record; once `enqueue` returns, it will run.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub id: String,
    pub function: String,
    pub trigger: TriggerKind,
    pub reason: Reason,
    /// Attempts in one round; a retry of a dead invocation gives it another round.
    pub attempts: u32,
    /// Higher is claimed first.
    pub priority: i32,
    /// When it may run (ms); `None` for now. Later than now, it waits as `scheduled`.
    pub run_after: Option<i64>,
    /// The caller's `Idempotency-Key`: a second submission to the same function with it
    /// gets the first's invocation, while that record is kept.
    pub idempotency_key: Option<String>,
    pub payload: Bytes,
    /// Trigger-specific variables the guest sees (CGI variables, timer and file details).
    pub vars: Vec<(String, String)>,
    /// The timer that fired it: runs of one timer never overlap.
    pub timer: Option<String>,
    /// The watched folder a file event comes from, mounted read-only at `/input`.
    pub input_dir: Option<PathBuf>,
    /// The invocation whose chain (`on_success`, `on_failure`) made this one.
    pub parent_id: Option<String>,
    /// How many parents it has: 0 for work a trigger or a user made.
    pub depth: u32,
    /// Where its record is POSTed once it ends (`succeeded`, `dead` or `cancelled`).
    pub callback: Option<String>,
}

/// What a finished attempt starts, stored in the transaction that stores its result, so a
/// crash can neither lose nor double them.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Queued when it ends `succeeded` (each with its payload set by the caller).
    pub on_success: Vec<NewInvocation>,
    /// Queued when it ends `dead`; its payload is the record as JSON, filled in by the
    /// store.
    pub on_failure: Option<NewInvocation>,
}

impl Chain {
    /// Whether ending in `state` starts the `on_failure` handler, which is given the
    /// record as it ended.
    fn wants_record(&self, state: State) -> bool {
        state == State::Dead && self.on_failure.is_some()
    }

    /// What an invocation that ended in `state` starts: its `on_success` steps when it
    /// `succeeded`, its `on_failure` handler with `record` (as JSON) when it is `dead`,
    /// nothing otherwise (a cancelled run, a failure with a retry to come).
    pub fn starts(
        self,
        state: State,
        record: Option<&Record>,
    ) -> anyhow::Result<Vec<NewInvocation>> {
        match (state, self.on_failure) {
            (State::Succeeded, _) => Ok(self.on_success),
            (State::Dead, Some(mut handler)) => {
                let record = record.context("the on_failure handler is given the record")?;
                handler.payload = serde_json::to_vec(record)?.into();
                Ok(vec![handler])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The columns of a record, in the order both stores read them. With `excerpt` (the name
/// of a bound parameter), the payload, stdout and stderr are cut to that many bytes, and
/// flagged as cut when they were longer. (`substr` and `length` of bytes mean the same in
/// SQLite and PostgreSQL.)
fn columns(excerpt: Option<&str>) -> String {
    let mut out = String::from(
        "id, function, trigger, reason, attempt, max_attempt, state, created_at, started_at,
         finished_at, run_after, duration_ms, exit_code, error, durable",
    );
    for field in ["payload", "stdout", "stderr"] {
        out += &match excerpt {
            Some(n) => format!(
                ", substr({field}, 1, {n}), {field}_truncated OR COALESCE(length({field}), 0) > {n}"
            ),
            None => format!(", {field}, {field}_truncated"),
        };
    }
    out + ", owner, priority, idempotency_key, cancel_requested, parent_id, progress,
        progress_message, callback_url, callback_state, callback_attempts, callback_status,
        callback_error, callback_next"
}

/// How far a running invocation says it has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub percent: u8,
    pub message: String,
}

impl Progress {
    /// From the stored columns: none until the guest said something.
    fn stored(percent: Option<i32>, message: Option<String>) -> Option<Progress> {
        Some(Progress {
            percent: u8::try_from(percent?).unwrap_or(100),
            message: message.unwrap_or_default(),
        })
    }
}

/// A duration in ms as the store keeps it.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The state and due time a new invocation is stored with: `Queued` (or what the caller
/// said) now, or `Scheduled` when it may run only later.
fn waiting(new: &NewInvocation, state: State, now: i64) -> (State, i64) {
    match new.run_after {
        Some(at) if at > now && state == State::Queued => (State::Scheduled, at),
        _ => (state, now),
    }
}

/// The claim of `new`, stored as its first attempt by `owner` (see
/// [`Queue::enqueue_claimed`]).
fn claimed_new(new: NewInvocation, owner: &HostId) -> Claimed {
    Claimed {
        lease: Lease {
            id: new.id,
            owner: owner.clone(),
            fence: 1,
        },
        function: new.function,
        trigger: Ok(new.trigger),
        attempt: 1,
        max_attempt: new.attempts,
        payload: new.payload,
        vars: new.vars,
        input_dir: new.input_dir,
        depth: new.depth,
    }
}

/// What a host can start now, for [`Queue::claim_due`].
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// At most this many in all: the host's free slots.
    pub limit: usize,
    /// The functions loaded here, each with its limits.
    pub functions: Vec<Slots>,
}

/// One function's room for more runs.
#[derive(Debug, Clone)]
pub struct Slots {
    pub function: String,
    /// How many more of it this host can run now.
    pub here: usize,
    /// Its `concurrency`: how many may run on all hosts together.
    pub everywhere: Option<usize>,
    /// It has timers: a run of one must wait while another run of that timer goes.
    pub timers: bool,
}

impl Slots {
    /// How many more may start, given how many run on all hosts now.
    fn room(&self, running_everywhere: i64) -> usize {
        let everywhere = self.everywhere.map_or(usize::MAX, |n| {
            n.saturating_sub(usize::try_from(running_everywhere).unwrap_or(usize::MAX))
        });
        self.here.min(everywhere)
    }
}

/// A due invocation that a claim may take, in claim order.
#[derive(Debug, Clone)]
struct Candidate {
    id: String,
    priority: i32,
    run_after: i64,
    timer: Option<String>,
}

/// Which candidates to claim: highest priority first, then the oldest due, then the oldest
/// id; at most `limit`, and at most one run of a timer.
fn choose(mut candidates: Vec<Candidate>, limit: usize) -> Vec<Candidate> {
    use std::cmp::Reverse;
    candidates.sort_by(|a, b| {
        (Reverse(a.priority), a.run_after, &a.id).cmp(&(Reverse(b.priority), b.run_after, &b.id))
    });
    let mut timers = std::collections::HashSet::new();
    candidates
        .into_iter()
        .filter(|c| c.timer.as_ref().is_none_or(|t| timers.insert(t.clone())))
        .take(limit)
        .collect()
}

/// The right to run one attempt. Each claim raises the invocation's fence; a result or a
/// release under an older fence changes nothing, so a host that lost its claim (stopped,
/// then rescued by another) cannot overwrite the newer attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub owner: HostId,
    pub fence: i64,
}

/// A queued invocation claimed to run now.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub function: String,
    /// The stored kind, or its text when this build does not know it.
    pub trigger: Result<TriggerKind, String>,
    pub attempt: u32,
    pub max_attempt: u32,
    pub payload: Bytes,
    pub vars: Vec<(String, String)>,
    pub input_dir: Option<PathBuf>,
    /// How many parents it has (see [`NewInvocation::depth`]).
    pub depth: u32,
}

/// What an attempt produced, as the store keeps it.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The failure reason; `None` when it succeeded.
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration: Duration,
}

/// How a finished attempt leaves the invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// Failed; run again at this time (ms).
    RetryAt(i64),
    /// Failed with every attempt used.
    Dead,
    /// Interrupted because a user cancelled it.
    Cancelled,
}

impl Next {
    /// The state it leaves the invocation in, and the time of its retry.
    fn state(self) -> (State, Option<i64>) {
        match self {
            Next::Succeeded => (State::Succeeded, None),
            Next::RetryAt(at) => (State::Failed, Some(at)),
            Next::Dead => (State::Dead, None),
            Next::Cancelled => (State::Cancelled, None),
        }
    }
}

/// The error text of an invocation a user cancelled.
pub const CANCELLED: &str = "cancelled";

/// What `recover` found after an unclean stop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Invocations that were running: queued again for their next attempt.
    pub requeued: usize,
    /// Invocations that were running their last attempt: `dead`, so that a guest that
    /// takes the host down with it cannot run forever. (Their `on_failure` handlers are
    /// the caller's to queue: the store does not know the functions.)
    pub dead: Vec<String>,
}

/// The store cannot be reached now (a lost database server); it may come back. The store
/// logs the outage once; callers that would log every failure leave it to the store.
#[derive(Debug, thiserror::Error)]
#[error("the store {store} cannot be reached now: {why}")]
pub struct Unreachable {
    pub store: String,
    pub why: String,
}

/// Whether `e` is (or wraps) [`Unreachable`].
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<Unreachable>())
}

/// Why a retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no invocation {0}")]
    NotFound(String),
    #[error("invocation {id} is {state}, not dead: only a dead invocation can be retried")]
    NotDead { id: String, state: State },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// What became of a cancel.
#[derive(Debug, Clone)]
pub enum Cancelled {
    /// It was waiting: it is `cancelled` now and will not run.
    Now(Record),
    /// It is running: marked, and its host interrupts it (see [`Queue::cancels`]). It ends
    /// `cancelled` unless it succeeds first.
    Requested(Record),
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no invocation {0}")]
    NotFound(String),
    #[error(
        "invocation {id} is {state}: only queued, scheduled, waiting-to-retry or running work can be cancelled"
    )]
    Ended { id: String, state: State },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// What a watch remembers of a file it handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub size: u64,
    pub mtime: i64,
}

/// One run of a timer to record.
#[derive(Debug, Clone)]
pub struct TimerFire {
    pub key: String,
    /// `Some((occurrence, cursor))`: fire only if the timer's cursor is still before
    /// `occurrence`, and move it to `cursor`, in the same transaction; so an occurrence
    /// fires once however many tasks (or hosts) reach it. `None`: a run outside the
    /// schedule (`run_on_startup`), which leaves the cursor alone.
    pub advance: Option<(i64, i64)>,
    pub overlap: Overlap,
    pub invocation: NewInvocation,
}

/// What became of a timer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    Queued,
    /// Recorded as `skipped`: the previous run is still going (or, with `overlap =
    /// "queue"`, one is already waiting).
    Skipped,
    /// The cursor had already passed the occurrence: nothing was recorded.
    AlreadyFired,
}

/// A finished synchronous invocation (sync HTTP, `jobhost invoke`): recorded, never retried.
#[derive(Debug, Clone)]
pub struct SyncRecord {
    pub id: String,
    pub function: String,
    pub trigger: TriggerKind,
    pub reason: Reason,
    pub started_at: i64,
    /// The host that ran it.
    pub host: HostId,
    /// What the store keeps of the payload: an excerpt, as of the output.
    pub payload: Bytes,
    pub payload_truncated: bool,
    pub output: Output,
}

/// An invocation as the API and the CLI show it. `trigger` and `reason` are the names as
/// stored: a record written by another version of jobhost, with a kind this one does not
/// know, is still shown.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub function: String,
    pub trigger: String,
    pub reason: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub state: State,
    #[serde(serialize_with = "time")]
    pub created_at: i64,
    #[serde(serialize_with = "maybe_time")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "maybe_time")]
    pub finished_at: Option<i64>,
    #[serde(serialize_with = "maybe_time")]
    pub next_attempt_at: Option<i64>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The payload as text (bytes that are not UTF-8 are replaced).
    pub payload: String,
    pub stdout: String,
    pub stderr: String,
    /// Whether the text is cut: an excerpt kept or listed, or output past `max_output`.
    pub payload_truncated: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The host that ran it (the last attempt's); none while it waits for its first.
    pub host: Option<String>,
    /// Background work: higher is claimed first.
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// A user asked to cancel it while it ran; its host interrupts it.
    pub cancel_requested: bool,
    /// The invocation whose chain made it.
    pub parent_id: Option<String>,
    /// What the guest last said of how far it has come (`set-progress`).
    pub progress: Option<Progress>,
    /// Its completion callback, if it has one, and how its delivery goes.
    pub callback: Option<CallbackView>,
    /// The invocations its chain made (in the single-record view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<String>>,
}

/// A completion callback as a record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackView {
    pub url: String,
    /// `waiting` (for the invocation to end), `pending` (to be delivered, or retried at
    /// `next_attempt_at`), `delivered` or `failed` (its attempts ran out).
    pub state: &'static str,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "maybe_time")]
    pub next_attempt_at: Option<i64>,
}

impl CallbackView {
    /// From the stored columns (see [`columns`]): none without a URL.
    #[allow(clippy::too_many_arguments)]
    fn stored(
        invocation: State,
        url: Option<String>,
        state: Option<String>,
        attempts: Option<i64>,
        status: Option<i64>,
        error: Option<String>,
        next: Option<i64>,
    ) -> Option<CallbackView> {
        let url = url?;
        let state = match state.as_deref() {
            Some("delivered") => "delivered",
            Some("failed") => "failed",
            _ if !invocation.has_ended() => "waiting",
            _ => "pending",
        };
        Some(CallbackView {
            url,
            state,
            attempts: u32::try_from(attempts.unwrap_or(0)).unwrap_or(0),
            last_status: status.and_then(|s| u16::try_from(s).ok()),
            last_error: error,
            next_attempt_at: (state == "pending").then_some(next).flatten(),
        })
    }
}

/// A callback due now, claimed for one delivery try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCallback {
    pub id: String,
    pub url: String,
    /// Tries so far, this one included.
    pub attempts: u32,
}

/// What one delivery try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackTry {
    pub delivered: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// When to try again (ms); `None` gives up (`failed`). Ignored once delivered.
    pub retry_at: Option<i64>,
}

/// The states in which an invocation has ended for good, as SQL (its callback is due).
/// Written as the callbacks' partial index says it, so a claim reads only that index,
/// which holds just the ended invocations whose callback is pending.
const ENDED: &str = "('succeeded', 'dead', 'cancelled')";

/// What `retry` sets: a fresh round of attempts, due now (`?`/`$` 2 is now, in ms).
const RETRIED: &str = "state = 'queued', reason = 'retry',
    max_attempt = attempt + COALESCE(attempts, max_attempt)";

/// What a retried invocation's callback becomes: due again once the new round ends.
const CALLBACK_AGAIN: &str =
    "callback_state = CASE WHEN callback_url IS NOT NULL THEN 'pending' END,
    callback_attempts = 0, callback_status = NULL, callback_error = NULL, callback_next = 0";

/// The callback's stored state and next try after `tried`.
fn after_try(tried: &CallbackTry) -> (&'static str, i64) {
    match (tried.delivered, tried.retry_at) {
        (true, _) => ("delivered", 0),
        (false, Some(at)) => ("pending", at),
        (false, None) => ("failed", 0),
    }
}

/// What became of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Recorded; it will run.
    New(String),
    /// The function already has an invocation with this idempotency key: its id, and
    /// whether it was made with the same payload.
    Existing { id: String, same_payload: bool },
}

fn time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

fn maybe_time<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

/// Filters of `GET /_jobhost/invocations` and `jobhost invocations`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub function: Option<String>,
    pub state: Option<State>,
    pub trigger: Option<TriggerKind>,
    /// Default 100, at most 1000.
    pub limit: Option<usize>,
    /// Each record's payload, stdout and stderr cut to this many bytes (flagged as cut), so
    /// a list stays small whatever the records hold; `None` lists them whole.
    pub excerpt: Option<usize>,
    /// Only records whose error holds this text (ASCII letters in any case).
    pub error: Option<String>,
    /// Paging by cursor: only records older than this id (the last of the page before).
    pub before: Option<String>,
}

impl Filter {
    /// The number of records asked for: 100 unless said, at most 1000.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }

    /// The list query's `WHERE` clause (empty without filters) and the (text) values of
    /// its placeholders in order; `mark(n)` writes the n-th placeholder (from 1) and `like` is
    /// the store's case-insensitive LIKE. Only the filters given become conditions, so the
    /// query planner can take the index of the one that narrows most (an `x IS NULL OR`
    /// form would hide them all).
    pub(crate) fn conditions(
        &self,
        mark: impl Fn(usize) -> String,
        like: &str,
    ) -> (String, Vec<String>) {
        let mut terms = Vec::new();
        let mut values = Vec::new();
        let mut add = |term: &dyn Fn(String) -> String, value: String| {
            values.push(value);
            terms.push(term(mark(values.len())));
        };
        if let Some(function) = &self.function {
            add(&|m| format!("function = {m}"), function.clone());
        }
        if let Some(state) = self.state {
            add(&|m| format!("state = {m}"), state.as_str().into());
        }
        if let Some(trigger) = self.trigger {
            add(&|m| format!("trigger = {m}"), trigger.as_str().into());
        }
        if let Some(text) = &self.error {
            // `error IS NOT NULL` lets both stores read the partial index of records with
            // an error instead of every record.
            let pattern = format!("%{}%", escape_like(text));
            add(
                &|m| format!("error IS NOT NULL AND error {like} {m} ESCAPE '\\'"),
                pattern,
            );
        }
        if let Some(before) = &self.before {
            add(&|m| format!("id < {m}"), before.clone());
        }
        let clause = if terms.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", terms.join(" AND "))
        };
        (clause, values)
    }
}

/// `text` matched literally by LIKE with `\` as the escape character.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The dashboard's overview: records by state, and invocations ended per minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Every record kept, by state (a state with none is left out).
    pub states: BTreeMap<String, u64>,
    /// One bucket per minute of the window, oldest first, the current minute last.
    pub minutes: Vec<Minute>,
}

/// The invocations whose last attempt ended in one minute, by how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute's start.
    #[serde(serialize_with = "time")]
    pub at: i64,
    pub succeeded: u64,
    /// `failed` or `dead`.
    pub failed: u64,
    /// `cancelled` or `skipped`.
    pub other: u64,
}

impl Stats {
    /// The `minutes` buckets ending with the minute that holds `now` (ms), filled from
    /// `(minute, state, count)` rows of ended invocations (minute = ms / 60,000).
    pub fn gather(
        states: Vec<(String, i64)>,
        ended: Vec<(i64, String, i64)>,
        now: i64,
        minutes: usize,
    ) -> Stats {
        let last = now.div_euclid(60_000);
        let first = last - minutes as i64 + 1;
        let mut buckets: Vec<Minute> = (first..=last)
            .map(|m| Minute {
                at: m * 60_000,
                ..Minute::default()
            })
            .collect();
        for (minute, state, count) in ended {
            let Some(bucket) = usize::try_from(minute - first)
                .ok()
                .and_then(|i| buckets.get_mut(i))
            else {
                continue;
            };
            let count = u64::try_from(count).unwrap_or(0);
            match State::parse(&state) {
                Some(State::Succeeded) => bucket.succeeded += count,
                Some(State::Failed | State::Dead) => bucket.failed += count,
                _ => bucket.other += count,
            }
        }
        Stats {
            states: states
                .into_iter()
                .map(|(state, n)| (state, u64::try_from(n).unwrap_or(0)))
                .collect(),
            minutes: buckets,
        }
    }

    /// The first ms the window of `minutes` ending at `now` covers.
    pub fn since(now: i64, minutes: usize) -> i64 {
        (now.div_euclid(60_000) - minutes as i64 + 1) * 60_000
    }
}

/// The durable queue: what the dispatcher and the queue worker use.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Records durable work; once this returns `New`, it will run. With an idempotency
    /// key the function already used, nothing is recorded and the first one is named.
    async fn enqueue(&self, new: NewInvocation) -> anyhow::Result<Enqueued>;
    /// Records durable work already claimed by `owner`, for a host that starts it at once:
    /// its first attempt, `running` under a lease as `claim` would leave it, and no other
    /// host told of it. Nothing is claimed with an idempotency key already used (as
    /// `enqueue`), nor for work not due yet (it is queued as `enqueue` would).
    async fn enqueue_claimed(
        &self,
        new: NewInvocation,
        owner: &HostId,
    ) -> anyhow::Result<(Enqueued, Option<Claimed>)>;
    /// Claims for `owner` what it can start now: up to `wanted.limit` due invocations of
    /// the wanted functions, highest priority first, then the oldest due; within each
    /// function's slots here and its `concurrency` counted on every host together; never a
    /// run of a timer while another run of it is going. Each claim is as `claim`'s.
    async fn claim_due(&self, owner: &HostId, wanted: &Wanted) -> anyhow::Result<Vec<Claimed>>;
    /// Notified when work may have become due by another host's (or process's) write: a
    /// hint, never the only way work is found. `None` when the store gives none.
    fn work_hint(&self) -> Option<Arc<tokio::sync::Notify>>;
    /// When the next waiting invocation becomes due.
    async fn next_due_at(&self) -> anyhow::Result<Option<i64>>;
    /// Invocations waiting: queued, or failed and awaiting a retry.
    async fn depth(&self) -> anyhow::Result<i64>;
    /// Marks one due invocation running for `owner`, with its next attempt and a new
    /// fence; `None` when it is not due (or a run of its timer is going).
    async fn claim(&self, id: &str, owner: &HostId) -> anyhow::Result<Option<Claimed>>;
    /// Stores an attempt's result, and queues what its `chain` starts for the state it ends
    /// in (a run marked for cancel ends `cancelled` and starts nothing), in one
    /// transaction; `false` when the lease is no longer current (the result is dropped).
    async fn finish(
        &self,
        lease: &Lease,
        output: Output,
        next: Next,
        chain: Chain,
    ) -> anyhow::Result<bool>;
    /// Puts an invocation interrupted by a graceful shutdown back in the queue without
    /// using its attempt; `false` when the lease is no longer current.
    async fn release(&self, lease: &Lease) -> anyhow::Result<bool>;
    /// Claims of `owner` made before `claimed_before` (ms, by `owner`'s clock) that it is
    /// not running (`running` lists what it runs): a claim the store committed but whose
    /// answer never reached the host (a connection that broke on the way), or a release
    /// that failed. Each goes back to the queue without using its attempt, as `release`
    /// does (one marked for cancel ends `cancelled`); returns their ids. Without this they
    /// would stay `running` under a host that lives, so no rescue takes them.
    async fn release_lost(
        &self,
        owner: &HostId,
        running: &[String],
        claimed_before: i64,
    ) -> anyhow::Result<Vec<String>>;
    /// After an unclean stop of `owner`: its running invocations run again (same id, next
    /// attempt), or end `dead` when that was their last attempt. (An implementation that
    /// only one host can use at a time may take every running row as the owner's.)
    async fn recover(&self, owner: &HostId) -> anyhow::Result<Recovered>;
    /// Queues a dead invocation again with a fresh round of the attempts it was given.
    async fn retry(&self, id: &str) -> Result<Record, RetryError>;
    /// Queues again, as `retry` does, up to `limit` dead invocations (of `function`, or of
    /// all), oldest first; returns how many.
    async fn retry_dead(&self, function: Option<&str>, limit: usize) -> anyhow::Result<usize>;
    /// Cancels an invocation: a waiting one is `cancelled` at once; a running one is marked
    /// for its host to interrupt, and `finish`, `release`, `recover` and `rescue` end it
    /// `cancelled` rather than run it again. Synchronous work (never queued) cannot be.
    async fn cancel(&self, id: &str) -> Result<Cancelled, CancelError>;
    /// Which of `running` (ids this host runs) a user asked to cancel.
    async fn cancels(&self, running: &[String]) -> anyhow::Result<Vec<String>>;
    /// Keeps a running attempt's checkpoint in place of the one before; `false` when the
    /// lease is no longer current (nothing changes). A success clears it.
    async fn save_checkpoint(&self, lease: &Lease, data: Bytes) -> anyhow::Result<bool>;
    /// The last checkpoint an invocation saved, in any attempt.
    async fn checkpoint(&self, id: &str) -> anyhow::Result<Option<Bytes>>;
    /// Records how far a running attempt has come; `false` when the lease is no longer
    /// current.
    async fn set_progress(&self, lease: &Lease, percent: u8, message: &str)
    -> anyhow::Result<bool>;
}

/// What triggers remember, each changed together with the invocation it fires.
#[async_trait]
pub trait TriggerState: Send + Sync {
    /// The last occurrence a timer handled (ms).
    async fn timer_cursor(&self, key: &str) -> anyhow::Result<Option<i64>>;
    async fn set_timer_cursor(&self, key: &str, at: i64) -> anyhow::Result<()>;
    /// Records a timer run (queued or skipped, by `overlap`) and moves its cursor, at once.
    async fn fire_timer(&self, fire: TimerFire) -> anyhow::Result<Fired>;
    /// Whether a timer's `run_on_startup` run should fire now: `true`, and remembered,
    /// unless one fired within `within` (on any host sharing the store).
    async fn claim_startup(&self, key: &str, within: Duration) -> anyhow::Result<bool>;
    /// Forgets the cursors of timers no longer configured.
    async fn forget_timers_except(&self, keep: &[String]) -> anyhow::Result<()>;
    /// Pauses (`true`) or resumes a function's background work: its timers fire no runs
    /// and its queued work is not claimed while it is paused, on every host. Whether that
    /// changed anything.
    async fn set_paused(&self, function: &str, paused: bool) -> anyhow::Result<bool>;
    /// The functions paused now.
    async fn paused(&self) -> anyhow::Result<BTreeSet<String>>;
    async fn receipt(&self, watch: &str, path: &str) -> anyhow::Result<Option<Receipt>>;
    async fn receipts(&self, watch: &str) -> anyhow::Result<HashMap<String, Receipt>>;
    /// Moves a file's receipt from `before` (as the caller read it) to `now` (`None`
    /// forgets it) and queues its invocation (`None` for a change the watch does not fire
    /// for), in one transaction: a handled file is never forgotten, a forgotten one never
    /// handled. Only while the stored receipt is still `before`: of two hosts (or tasks)
    /// that saw the same change, the first handles it, and the other gets `false`.
    async fn fire_file(
        &self,
        watch: &str,
        path: &str,
        before: Option<Receipt>,
        now: Option<Receipt>,
        invocation: Option<NewInvocation>,
    ) -> anyhow::Result<bool>;
}

/// The records: what the API and the CLI read.
#[async_trait]
pub trait History: Send + Sync {
    /// Records a finished synchronous invocation. Never waits: records are written in
    /// batches off the caller's path, so the last few may be lost in a crash.
    fn record(&self, record: SyncRecord);
    /// Writes every record handed over before (readers call it to see their writes).
    async fn flush(&self) -> anyhow::Result<()>;
    async fn get(&self, id: &str) -> anyhow::Result<Option<Record>>;
    /// The ids of the invocations `id`'s chain made, oldest first.
    async fn children(&self, id: &str) -> anyhow::Result<Vec<String>>;
    /// Records newest first, filtered, their output cut to `filter.excerpt`.
    async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Record>>;
    /// Records by state, and the invocations ended in each of the `minutes` minutes up to
    /// `now` (ms), by the end of their last attempt.
    async fn stats(&self, now: i64, minutes: usize) -> anyhow::Result<Stats>;
    /// Deletes finished records that ended before `before` (ms); returns how many.
    async fn prune(&self, before: i64) -> anyhow::Result<usize>;
    /// The bytes the store takes on disk.
    async fn bytes(&self) -> anyhow::Result<u64>;
    /// Whether the store is still there to write to: an error when it went away under the
    /// host (a deleted or replaced file, a lost server), so the host can stop loudly rather
    /// than accept work it cannot keep.
    async fn check(&self) -> anyhow::Result<()>;
}

/// A host as `GET /_jobhost/hosts` and `jobhost hosts` show it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub id: String,
    #[serde(serialize_with = "time")]
    pub started_at: i64,
    #[serde(serialize_with = "time")]
    pub last_heartbeat: i64,
    /// Heard from within the lease; a host silent longer is taken for dead.
    pub alive: bool,
    /// Background invocations it is running (as the store sees them).
    pub running: i64,
}

/// A host found silent for longer than the lease, and what became of its running work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub host: String,
    /// Queued again for their next attempt (same id), as after a crash.
    pub requeued: usize,
    /// Ended `dead`: it was their last attempt (as in [`Recovered::dead`]).
    pub dead: Vec<String>,
}

/// The hosts sharing a store: each says it is alive, and a live one rescues the running
/// work of one that fell silent. Silence is measured on the store's clock where it has one
/// (PostgreSQL's), so hosts' clocks need not agree for it.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Says `host`, running since `started_at` (ms), is alive now.
    async fn heartbeat(&self, host: &HostId, started_at: i64) -> anyhow::Result<()>;
    /// Running background work of hosts not heard from within `lease` (or never): queued
    /// again for its next attempt, or `dead` on its last; per host. Its late results are
    /// dropped by the fence.
    async fn rescue(&self, lease: Duration) -> anyhow::Result<Vec<Rescued>>;
    /// Every host that ever said it was alive, with whether it still is within `lease`.
    async fn hosts(&self, lease: Duration) -> anyhow::Result<Vec<HostView>>;
}

/// Completion callbacks: an invocation submitted with one has its record POSTed once it
/// ends. Delivery is at least once: a try is claimed for a while, and a host that dies
/// during it leaves it to be claimed again.
#[async_trait]
pub trait Callbacks: Send + Sync {
    /// Up to `limit` callbacks of ended invocations that are due, oldest due first, each
    /// held for `hold` (claimers on other hosts skip it meanwhile) and counted as a try.
    async fn claim_callbacks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> anyhow::Result<Vec<DueCallback>>;
    /// Stores what the try `due` came to, unless another try has begun since (its hold
    /// ran out) or the invocation was retried: then it is theirs to say.
    async fn callback_tried(&self, due: &DueCallback, tried: CallbackTry) -> anyhow::Result<()>;
}

/// Key-value data (`wasi:keyvalue`, `jobhost kv`) in named stores: bytes under text keys,
/// ordered by the keys' bytes. Every call is one transaction; on PostgreSQL all hosts share
/// it.
#[async_trait]
pub trait KeyValues: Send + Sync {
    /// The value of each key, in the order asked (`None` where there is none).
    async fn get(&self, store: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>>;
    /// Sets every pair, all or none: keys new to `store` may not take it past `max_keys`.
    async fn set(
        &self,
        store: &str,
        pairs: &[(String, Vec<u8>)],
        max_keys: u64,
    ) -> Result<(), KvError>;
    /// Deletes the keys; returns how many were there.
    async fn delete(&self, store: &str, keys: &[String]) -> anyhow::Result<u64>;
    /// Up to `limit` keys that start with `prefix`, in order, skipping the first `offset`.
    async fn keys(
        &self,
        store: &str,
        prefix: &str,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<Vec<String>>;
    /// Adds `delta` to the decimal number that `key` holds (none is 0) and returns the sum,
    /// kept as decimal text: one atomic step, however many callers (and hosts) add at once.
    async fn increment(
        &self,
        store: &str,
        key: &str,
        delta: u64,
        max_keys: u64,
    ) -> Result<u64, KvError>;
}

/// Why a key-value write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the store {store:?} holds {max} keys, its limit (max_kv_keys): delete some first")]
    TooManyKeys { store: String, max: u64 },
    #[error("the value of {0:?} is not a decimal number, so it cannot be incremented")]
    NotANumber(String),
    #[error("incrementing {0:?} would pass the largest number (2^64 - 1)")]
    Overflow(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// A key-value result with its store error taken out, for the helpers that name the store
/// in every error; [`KvError::Store`] puts it back.
fn lift<T>(result: Result<T, KvError>) -> anyhow::Result<Result<T, KvError>> {
    match result {
        Err(KvError::Store(e)) => Err(e),
        other => Ok(other),
    }
}

/// What `increment` stores: `current` (decimal text, if any) plus `delta`.
fn incremented(key: &str, current: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let now = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| KvError::NotANumber(key.to_string()))?,
    };
    now.checked_add(delta)
        .ok_or_else(|| KvError::Overflow(key.to_string()))
}

/// Rescued work per host, from the owners of the rows queued again and the owners and ids
/// of those ended dead.
fn rescued(requeued: Vec<Option<String>>, dead: Vec<(Option<String>, String)>) -> Vec<Rescued> {
    let mut by_host: BTreeMap<String, Rescued> = BTreeMap::new();
    let requeued = requeued.into_iter().map(|owner| (owner, None));
    let dead = dead.into_iter().map(|(owner, id)| (owner, Some(id)));
    for (owner, dead_id) in requeued.chain(dead) {
        let host = owner.unwrap_or_else(|| "(unknown)".to_string());
        let entry = by_host.entry(host.clone()).or_insert(Rescued {
            host,
            requeued: 0,
            dead: Vec::new(),
        });
        match dead_id {
            Some(id) => entry.dead.push(id),
            None => entry.requeued += 1,
        }
    }
    by_host.into_values().collect()
}

/// One store seen through its traits.
#[derive(Clone)]
pub struct Store {
    pub queue: Arc<dyn Queue>,
    pub triggers: Arc<dyn TriggerState>,
    pub history: Arc<dyn History>,
    pub cluster: Arc<dyn Cluster>,
    pub kv: Arc<dyn KeyValues>,
    pub callbacks: Arc<dyn Callbacks>,
    /// Which store, for messages: its file, or its server and database.
    pub name: Arc<str>,
}

impl Store {
    pub fn new<S: Queue + TriggerState + History + Cluster + KeyValues + Callbacks + 'static>(
        store: S,
        name: impl Into<Arc<str>>,
    ) -> Store {
        let store = Arc::new(store);
        Store {
            queue: store.clone(),
            triggers: store.clone(),
            history: store.clone(),
            cluster: store.clone(),
            kv: store.clone(),
            callbacks: store,
            name: name.into(),
        }
    }

    /// Opens the store `[host] store` names, for a host: one host per data folder (it
    /// holds `data/host.lock`, and `data/host-id` names its claims).
    pub async fn open_for_host(host: &HostSettings) -> anyhow::Result<Store> {
        let lock = lock_data_dir(&host.data_dir)?;
        Store::open(host, Some(lock)).await
    }

    /// Opens the store beside a running host, for the CLI.
    pub async fn open_beside_host(host: &HostSettings) -> anyhow::Result<Store> {
        Store::open(host, None).await
    }

    async fn open(host: &HostSettings, lock: Option<File>) -> anyhow::Result<Store> {
        Ok(match &host.store {
            StoreSettings::Sqlite => {
                let store = sqlite::SqliteStore::open(&host.data_dir, lock)?;
                let name = store.path().display().to_string();
                Store::new(store, name)
            }
            StoreSettings::Postgres { url, connections } => {
                let store = postgres::PostgresStore::open(url, *connections, lock).await?;
                let name = store.name().to_string();
                Store::new(store, name)
            }
        })
    }
}

/// Takes `data/host.lock` (an OS file lock, held while the returned file is open), so a
/// second host on the same data folder, and so with the same host id, is refused.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data folder {}", data_dir.display()))?;
    let lock_path = data_dir.join("host.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another jobhost is running on the data folder {}: stop it, or give this host its own `data` in [host]",
            data_dir.display()
        );
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_in_the_store_is_shown_without_panicking() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }
}
